//! Limits on what clients make the listener hold: open connections (`max.connections`,
//! `max.connections.per.ip`) and request bytes read ahead across all connections
//! (`queued.max.request.bytes`).
//!
//! [`ConnectionLimits::admit`] is asked once per accepted socket; a refused one is closed at
//! once, as Kafka does, and the refusals are logged at most once per
//! [`REFUSAL_LOG_INTERVAL`] so that a client retrying in a loop cannot flood the log.
//! [`RequestBudget::reserve`] is awaited before a request's bytes are read: a connection whose
//! next request does not fit stops reading its socket (TCP pushes back on the client) until
//! requests already read have been handled.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Refused connections are logged at most this often (with a count of the ones in between).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counts open connections, in all and per client address.
#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<Open>,
    /// Woken when the last connection closes (a stopping server waits for it).
    closed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Only addresses with an open connection have an entry, so this is bounded by `total`.
    per_ip: HashMap<IpAddr, usize>,
    refused_unlogged: u64,
    last_logged: Option<Instant>,
}

/// An open connection's place in the counts; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    /// Limits of `max_total` connections, `max_per_ip` of them from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max_total,
            max_per_ip,
            state: Mutex::new(Open::default()),
            closed: tokio::sync::Notify::new(),
        })
    }

    /// Takes a place for a connection from `ip`, or says which limit it is past (and logs the
    /// refusal, rate-limited). The caller closes a refused connection.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, String> {
        // An IPv4 client on a dual-stack socket counts as its IPv4 address.
        let ip = ip.to_canonical();
        let mut open = self.state.lock();
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        let refusal = if open.total >= self.max_total {
            Some(format!(
                "{} connections are open, max.connections={}",
                open.total, self.max_total
            ))
        } else if from_ip >= self.max_per_ip {
            Some(format!(
                "{from_ip} connections from {ip} are open, max.connections.per.ip={}",
                self.max_per_ip
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            open.refused_unlogged += 1;
            let now = Instant::now();
            if open
                .last_logged
                .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL)
            {
                tracing::warn!(
                    client = %ip,
                    %reason,
                    refused = open.refused_unlogged,
                    "refusing Kafka connections past the connection limits (count since the last report)"
                );
                open.refused_unlogged = 0;
                open.last_logged = Some(now);
            }
            return Err(reason);
        }
        open.total += 1;
        *open.per_ip.entry(ip).or_insert(0) += 1;
        Ok(ConnectionSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.state.lock().total
    }

    /// Resolves once no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            // Registered before the check, so a close between the two is not missed.
            closed.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.state.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
        if open.total == 0 {
            self.limits.closed.notify_waiters();
        }
    }
}

/// The bytes of requests read but not yet handled, across all connections, within a cap.
///
/// A request larger than the whole cap (possible when `queued.max.request.bytes` is below
/// `socket.request.max.bytes`) is let through once nothing else is queued: it takes the whole
/// budget. Waiters are served in order, so a large request is not starved by small ones.
#[derive(Debug)]
pub struct RequestBudget {
    permits: Arc<Semaphore>,
    cap_bytes: usize,
}

impl RequestBudget {
    /// A budget of `cap_bytes` (at least 1, at most `u32::MAX`).
    pub fn new(cap_bytes: usize) -> RequestBudget {
        let cap_bytes = cap_bytes.clamp(1, u32::MAX as usize);
        RequestBudget {
            permits: Arc::new(Semaphore::new(cap_bytes)),
            cap_bytes,
        }
    }

    /// Waits until a request of `len` bytes fits, and holds its room until the returned permit
    /// is dropped (when the request has been handled). `None` only if the budget was closed.
    pub async fn reserve(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let n = len.min(self.cap_bytes) as u32;
        self.permits.clone().acquire_many_owned(n).await.ok()
    }

    /// Bytes reserved now (a request larger than the cap counts as the cap).
    pub fn queued_bytes(&self) -> usize {
        self.cap_bytes - self.permits.available_permits().min(self.cap_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn connections_past_either_limit_are_refused_and_places_come_back() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = limits.admit(a);
        let a2 = limits.admit(a);
        assert!(a1.is_ok() && a2.is_ok());
        let refused = limits.admit(a).err().unwrap_or_default();
        assert!(refused.contains("max.connections.per.ip=2"), "{refused}");
        // The same client over IPv6-mapped IPv4 is the same address.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(limits.admit(mapped).is_err());
        let b1 = limits.admit(b);
        assert!(b1.is_ok());
        let refused = limits.admit(b).err().unwrap_or_default();
        assert!(refused.contains("max.connections=3"), "{refused}");
        assert_eq!(limits.open(), 3);
        drop(a1);
        assert_eq!(limits.open(), 2);
        assert!(limits.admit(b).is_ok(), "a freed place is taken again");
        drop(a2);
        assert!(
            !limits.state.lock().per_ip.contains_key(&a),
            "no entry is left behind"
        );
    }

    #[test]
    fn requests_past_the_budget_wait_until_room_frees_up() {
        let budget = RequestBudget::new(1000);
        let first = budget.reserve(600).now_or_never().flatten();
        assert!(first.is_some());
        assert_eq!(budget.queued_bytes(), 600);
        let mut second = Box::pin(budget.reserve(500));
        assert!(
            (&mut second).now_or_never().is_none(),
            "500 more do not fit"
        );
        drop(first);
        let second = second.now_or_never().flatten();
        assert!(
            second.is_some(),
            "it fits once the first request is handled"
        );
        assert_eq!(budget.queued_bytes(), 500);
    }

    #[test]
    fn a_request_larger_than_the_budget_goes_through_alone() {
        let budget = RequestBudget::new(1000);
        let small = budget.reserve(10).now_or_never().flatten();
        let mut huge = Box::pin(budget.reserve(5000));
        assert!(
            (&mut huge).now_or_never().is_none(),
            "waits for the queue to empty"
        );
        // Waiters are served in order: a small request behind the huge one waits too.
        let mut later = Box::pin(budget.reserve(10));
        assert!((&mut later).now_or_never().is_none());
        drop(small);
        let huge = huge.now_or_never().flatten();
        assert!(huge.is_some());
        assert_eq!(budget.queued_bytes(), 1000);
        drop(huge);
        assert!(later.now_or_never().flatten().is_some());
    }
}
