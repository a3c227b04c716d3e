//! How the tasks of a running query talk: bounded channels carrying batches, watermarks and
//! checkpoint barriers ([`Message`]).
//!
//! - [`Output`] sends a task's results on: hash-partitioned by the next stateful operator's
//!   keys (a keyed exchange, so each key's state lives in one task and its rows stay in order),
//!   all to one task (an aggregate without keys), or to the sink task. Watermarks and barriers
//!   go to every receiver.
//! - [`Inputs`] receives from every upstream task. It merges their watermarks (the minimum over
//!   inputs that are not idle or closed) and aligns barriers: once an input has delivered the
//!   barrier of an epoch it is not read again until every input has delivered it, so what a
//!   task holds at a barrier is exactly the effect of the records before it. Channels are
//!   bounded, so a blocked input backs up into its sender: backpressure, not buffering.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::physical_expr::PhysicalExpr;
use tokio::sync::mpsc;

use crate::checkpoint::{Positions, StateFile, TaskWatermark};
use crate::error::{EngineError, Result};
use crate::format::BadRecord;
use crate::operator::LateRows;

/// Messages in flight per channel before the sender waits.
pub(crate) const CHANNEL_CAPACITY: usize = 8;

/// The seed of the exchange's key hash: fixed, so a key goes to the same task in every run
/// (state restored from a checkpoint is split the same way).
const HASH_SEED: u64 = 0x5157_4956_4552;

/// A checkpoint barrier: everything before it belongs to `epoch`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Barrier {
    pub epoch: u64,
    /// The source positions at the barrier, merged over source tasks.
    pub positions: Positions,
    /// The query stops after this barrier.
    pub stop: bool,
    /// Each task's watermark at the barrier.
    pub watermarks: Vec<TaskWatermark>,
    /// The state files the tasks wrote for this epoch (checkpointing queries).
    pub state: Vec<StateFile>,
}

impl Barrier {
    fn merge(&mut self, other: Barrier) -> Result<()> {
        if other.epoch != self.epoch {
            return Err(EngineError::internal(format!(
                "barriers of epochs {} and {} crossed",
                self.epoch, other.epoch
            )));
        }
        for (topic, partitions) in other.positions {
            self.positions.entry(topic).or_default().extend(partitions);
        }
        // A barrier reaches a task once from every upstream task, and each copy carries what
        // the stages before wrote: a file or watermark of an earlier stage arrives once per
        // path, and is kept once.
        for w in other.watermarks {
            if !self
                .watermarks
                .iter()
                .any(|m| m.stage == w.stage && m.task == w.task)
            {
                self.watermarks.push(w);
            }
        }
        for f in other.state {
            if !self
                .state
                .iter()
                .any(|m| m.operator == f.operator && m.task == f.task)
            {
                self.state.push(f);
            }
        }
        self.stop |= other.stop;
        Ok(())
    }
}

/// The task (of `n`) each row goes to by the hash of its key `columns` (the keyed exchange's
/// rule, also used to split restored state when the parallelism changed). `hashes` is scratch.
pub(crate) fn route_rows(
    columns: &[ArrayRef],
    n: usize,
    hashes: &mut Vec<u64>,
) -> Result<Vec<usize>> {
    let rows = columns.first().map_or(0, |c| c.len());
    hashes.clear();
    hashes.resize(rows, 0);
    create_hashes(columns, &RandomState::with_seed(HASH_SEED), hashes)?;
    Ok(hashes.iter().map(|h| (*h % n as u64) as usize).collect())
}

/// Side output travelling with the data, so it stays in order with barriers.
#[derive(Debug)]
pub(crate) enum Side {
    /// Records of the query's source `input` that did not decode.
    Bad {
        input: usize,
        records: Vec<BadRecord>,
    },
    Late(Vec<LateRows>),
}

#[derive(Debug)]
pub(crate) enum Message {
    Batch(RecordBatch),
    Side(Side),
    /// The sender's watermark moved here (`i64::MAX`: its input has ended).
    Watermark(i64),
    /// The sender has nothing to read: it does not hold the watermark back.
    Idle,
    Barrier(Barrier),
}

/// What [`Inputs::next`] gives.
#[derive(Debug)]
pub(crate) enum Event {
    Batch(RecordBatch),
    Side(Side),
    /// The merged watermark moved here.
    Watermark(i64),
    /// Every input delivered this barrier.
    Barrier(Barrier),
}

#[derive(Debug, Default, Clone, Copy)]
struct InputState {
    closed: bool,
    blocked: bool,
    idle: bool,
    watermark: Option<i64>,
}

/// The receiving end of a task (see the module docs).
#[derive(Debug)]
pub(crate) struct Inputs {
    receivers: Vec<mpsc::Receiver<Message>>,
    state: Vec<InputState>,
    aligning: Option<Barrier>,
    watermark: i64,
    next: usize,
}

impl Inputs {
    pub(crate) fn new(receivers: Vec<mpsc::Receiver<Message>>) -> Inputs {
        let n = receivers.len();
        Inputs {
            receivers,
            state: vec![InputState::default(); n],
            aligning: None,
            watermark: i64::MIN,
            next: 0,
        }
    }

    /// The merged watermark: the minimum over inputs that are neither closed nor idle, `None`
    /// while one of them has none yet; with every open input idle, the largest of theirs (as
    /// a source merges its idle partitions), so the order in which inputs go idle does not
    /// matter.
    fn merged(&self) -> Option<i64> {
        let mut out: Option<i64> = None;
        let mut active = false;
        let mut idle_max: Option<i64> = None;
        for s in &self.state {
            if s.closed {
                continue;
            }
            if s.idle {
                idle_max = idle_max.max(s.watermark);
                continue;
            }
            active = true;
            let w = s.watermark?;
            out = Some(out.map_or(w, |o| o.min(w)));
        }
        if active { out } else { idle_max }
    }

    /// The next event; `None` once every input has closed.
    pub(crate) async fn next(&mut self) -> Result<Option<Event>> {
        loop {
            if self.aligning.is_some() && self.state.iter().all(|s| s.blocked || s.closed) {
                for s in &mut self.state {
                    s.blocked = false;
                }
                let barrier = self.aligning.take().unwrap_or_default();
                return Ok(Some(Event::Barrier(barrier)));
            }
            if self.state.iter().all(|s| s.closed) {
                return Ok(None);
            }
            let (i, message) = self.receive().await;
            let Some(message) = message else {
                self.state[i].closed = true;
                if let Some(e) = self.watermark_event() {
                    return Ok(Some(e));
                }
                continue;
            };
            match message {
                Message::Batch(b) => return Ok(Some(Event::Batch(b))),
                Message::Side(s) => return Ok(Some(Event::Side(s))),
                Message::Watermark(w) => {
                    let s = &mut self.state[i];
                    s.idle = false;
                    s.watermark = Some(s.watermark.map_or(w, |o| o.max(w)));
                }
                Message::Idle => self.state[i].idle = true,
                Message::Barrier(b) => {
                    self.state[i].blocked = true;
                    match &mut self.aligning {
                        Some(a) => a.merge(b)?,
                        None => self.aligning = Some(b),
                    }
                }
            }
            if let Some(e) = self.watermark_event() {
                return Ok(Some(e));
            }
        }
    }

    fn watermark_event(&mut self) -> Option<Event> {
        match self.merged() {
            Some(w) if w > self.watermark => {
                self.watermark = w;
                Some(Event::Watermark(w))
            }
            _ => None,
        }
    }

    /// A message from an input that is neither closed nor blocked, taking turns; `None` as the
    /// message when that input has closed.
    async fn receive(&mut self) -> (usize, Option<Message>) {
        let n = self.receivers.len();
        poll_fn(|cx| {
            for k in 0..n {
                let i = (self.next + k) % n;
                let s = self.state[i];
                if s.closed || s.blocked {
                    continue;
                }
                if let Poll::Ready(m) = self.receivers[i].poll_recv(cx) {
                    self.next = (i + 1) % n;
                    return Poll::Ready((i, m));
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// Where a task's output goes.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// By the hash of these key expressions, one receiver per downstream task.
    Hash(Vec<Arc<dyn PhysicalExpr>>),
    /// Everything to the first receiver (an aggregate without keys, or the sink task).
    First,
}

/// The sending end of a task (see the module docs).
#[derive(Debug)]
pub(crate) struct Output {
    senders: Vec<mpsc::Sender<Message>>,
    route: Route,
    hashes: Vec<u64>,
}

impl Output {
    pub(crate) fn new(senders: Vec<mpsc::Sender<Message>>, route: Route) -> Output {
        Output {
            senders,
            route,
            hashes: Vec::new(),
        }
    }

    async fn send(&self, to: usize, message: Message) -> Result<()> {
        self.senders[to]
            .send(message)
            .await
            .map_err(|_| EngineError::DownstreamGone)
    }

    /// Sends a batch where the route says.
    pub(crate) async fn batch(&mut self, batch: RecordBatch) -> Result<()> {
        let n = self.senders.len();
        let keys = match &self.route {
            Route::Hash(keys) if n > 1 && !keys.is_empty() => keys,
            _ => return self.send(0, Message::Batch(batch)).await,
        };
        let rows = batch.num_rows();
        let columns = keys
            .iter()
            .map(|k| k.evaluate(&batch).and_then(|v| v.into_array(rows)))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let mut parts: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (row, to) in route_rows(&columns, n, &mut self.hashes)?
            .iter()
            .enumerate()
        {
            parts[*to].push(row as u32);
        }
        for (to, rows_to) in parts.into_iter().enumerate() {
            if rows_to.is_empty() {
                continue;
            }
            let part = if rows_to.len() == rows {
                batch.clone()
            } else {
                take_record_batch(&batch, &UInt32Array::from(rows_to))?
            };
            self.send(to, Message::Batch(part)).await?;
        }
        Ok(())
    }

    /// Side output, to the first receiver (it ends up at the sink task either way).
    pub(crate) async fn side(&self, side: Side) -> Result<()> {
        self.send(0, Message::Side(side)).await
    }

    /// A watermark, idleness or barrier, to every receiver.
    pub(crate) async fn broadcast(&self, message: impl Fn() -> Message) -> Result<()> {
        for to in 0..self.senders.len() {
            self.send(to, message()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

    use super::*;

    async fn watermarks(inputs: &mut Inputs) -> Vec<i64> {
        let mut out = Vec::new();
        while let Some(e) = inputs.next().await.unwrap() {
            if let Event::Watermark(w) = e {
                out.push(w);
            }
        }
        out
    }

    #[test]
    fn a_barrier_merged_from_every_path_lists_each_state_file_once() {
        let file = |task| StateFile {
            operator: "join_1".into(),
            task,
            file: format!("join_1-{task}.arrow"),
            rows: 1,
            epoch: None,
        };
        let watermark = |task| TaskWatermark {
            stage: 1,
            task,
            watermark: 5,
        };
        // What two tasks of a second stateful stage send on: both carry every file of the
        // first stateful stage, and their own.
        let mut a = Barrier {
            epoch: 3,
            state: vec![file(0), file(1)],
            watermarks: vec![watermark(0), watermark(1)],
            ..Barrier::default()
        };
        let b = a.clone();
        a.merge(b).unwrap();
        assert_eq!(a.state, vec![file(0), file(1)]);
        assert_eq!(a.watermarks, vec![watermark(0), watermark(1)]);
    }

    #[tokio::test]
    async fn inputs_that_all_go_idle_leave_the_watermark_at_the_furthest_whatever_their_order() {
        for idle_first in [0usize, 1] {
            let (a, ra) = mpsc::channel(8);
            let (b, rb) = mpsc::channel(8);
            let mut inputs = Inputs::new(vec![ra, rb]);
            a.send(Message::Watermark(300)).await.unwrap();
            b.send(Message::Watermark(400)).await.unwrap();
            let (first, second) = if idle_first == 0 { (&a, &b) } else { (&b, &a) };
            first.send(Message::Idle).await.unwrap();
            // Everything sent so far is read before the second input goes idle.
            let mut got = Vec::new();
            while let Ok(e) =
                tokio::time::timeout(std::time::Duration::from_millis(50), inputs.next()).await
            {
                if let Some(Event::Watermark(w)) = e.unwrap() {
                    got.push(w);
                }
            }
            second.send(Message::Idle).await.unwrap();
            drop((a, b));
            got.extend(watermarks(&mut inputs).await);
            assert_eq!(
                got.last(),
                Some(&400),
                "input {idle_first} idle first: {got:?}"
            );
            assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        }
    }
}
