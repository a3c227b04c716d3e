//! The sink contract: how a connector hands records to a sink and when it commits their
//! offsets.
//!
//! A sink task owns some partitions of some topics, until its group rebalances (then it closes
//! and is opened again for its new share). The runner ([`crate::runner`]):
//!
//! 1. reads what the connector's consumer group (`connect-<name>`) committed for them, and
//!    gives it to [`Sink::open`], offsets and the metadata the sink wrote with them; it reads
//!    each partition from its committed offset (or the earliest, for a partition never
//!    committed);
//! 2. hands over records with [`Sink::write`], one partition's rows at a time and in offset
//!    order, and says how far each partition has been read with [`Sink::read_up_to`] (records
//!    the sink never saw below that offset were transaction markers, aborted records or bad
//!    records the connector skips);
//! 3. after every write and every [`Sink::tick`], before anything else reaches the sink, asks
//!    [`Sink::prepare`] for the positions that are ready: a [`Commit`] says "everything below `offset` in this partition is durable
//!    in the sink, and `metadata` is what I need back to resume". Only then does it commit them
//!    to the group, and tell the sink with [`Sink::committed`];
//! 4. on a stop, [`Sink::close`] finishes what is in progress and gives the last positions.
//!
//! A crash anywhere leaves the group at the last commit, so records after it are read again:
//! a sink makes a replay harmless (the Parquet sink names its files by where they start, so a
//! replay overwrites a file instead of adding a second one), and that is what makes the
//! whole exactly-once.

use std::collections::BTreeMap;
use std::fmt::Debug;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;

use crate::error::Result;

/// What a connector's group had committed for a partition: the offset and the sink's
/// metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Committed {
    pub offset: i64,
    pub metadata: String,
}

/// A position ready to be committed: every record of the partition below `offset` is durable
/// in the sink; `metadata` goes with it and comes back in [`Sink::open`] after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub metadata: String,
}

/// A sink task (see the module docs for the order of calls).
#[async_trait]
pub trait Sink: Send + Debug {
    /// A short description for status output (`parquet to s3://lake/events`).
    fn describe(&self) -> String;

    /// Prepares for batches of each topic's schema, for the partitions this task owns (`owned`:
    /// none of the others is written by this task until the next `open`, and other tasks may be
    /// writing them meanwhile), and takes what was committed before for them.
    async fn open(
        &mut self,
        topics: &[(String, SchemaRef)],
        owned: &[(String, i32)],
        committed: &BTreeMap<(String, i32), Committed>,
    ) -> Result<()>;

    /// Rows of one partition of `topic`, in offset order, in the topic's schema (with the
    /// `rowtime`, `rowpartition` and `rowoffset` columns).
    async fn write(&mut self, topic: &str, batch: RecordBatch) -> Result<()>;

    /// `topic`-`partition` has been read up to `next` (the next offset to read).
    fn read_up_to(&mut self, topic: &str, partition: i32, next: i64);

    /// Work on the wall clock (a rotation timer); called about once a second.
    async fn tick(&mut self) -> Result<()>;

    /// Makes durable what is ready and returns the positions that moved since the last
    /// commit.
    async fn prepare(&mut self) -> Result<Vec<Commit>>;

    /// The positions from the last [`Sink::prepare`] are committed.
    fn committed(&mut self, commits: &[Commit]);

    /// Finishes everything in progress and returns the last positions to commit.
    async fn close(&mut self) -> Result<Vec<Commit>>;
}
