//! One member of a group: what it said in its last JoinGroup, its assignment, its pending
//! JoinGroup or SyncGroup (answered through a oneshot channel), and its heartbeat deadline.

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::messages::{JoinResponse, SyncResponse};

/// A group member.
#[derive(Debug)]
pub struct Member {
    pub id: String,
    /// `group.instance.id` of a static member.
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// `(name, metadata)` in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// What the leader assigned it in the current generation.
    pub assignment: Bytes,
    /// Its JoinGroup, waiting for the rebalance to complete.
    pub join_waiter: Option<oneshot::Sender<JoinResponse>>,
    /// Its SyncGroup, waiting for the leader's assignment.
    pub sync_waiter: Option<oneshot::Sender<SyncResponse>>,
    /// Joined in the rebalance under way (not yet given a generation).
    pub is_new: bool,
    /// When the member is removed unless it heartbeats (or waits in a JoinGroup or SyncGroup).
    pub heartbeat_deadline: Option<Instant>,
}

impl Member {
    /// True when it waits in a JoinGroup.
    pub fn awaiting_join(&self) -> bool {
        self.join_waiter.is_some()
    }

    /// True when it waits in a SyncGroup.
    pub fn awaiting_sync(&self) -> bool {
        self.sync_waiter.is_some()
    }

    /// True when `protocols` are exactly the ones it joined with (names, metadata and order).
    pub fn matches(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    /// Its metadata for `protocol` (empty if it does not support it).
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// True when it offers `protocol`.
    pub fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(name, _)| name == protocol)
    }

    /// Its most preferred protocol among `candidates`.
    pub fn vote<'a>(&'a self, candidates: &[&str]) -> Option<&'a str> {
        self.protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .find(|name| candidates.contains(name))
    }
}
