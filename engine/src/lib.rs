//! Quiver's engine: continuous queries on DataFusion and Arrow.
//!
//! A query is a DataFusion `LogicalPlan` whose leaves are streams ([`plan::StreamTable`]); the
//! DSL ([`dsl`]) and the SQL layer both build one. [`plan::plan_query`] types and optimizes it
//! with DataFusion and turns it into a chain of streaming operators ([`operator`]): stateless
//! work runs as DataFusion physical expressions over each batch, aggregations
//! ([`aggregate`]) use DataFusion's accumulators over windows ([`window`]) or as updating
//! tables. [`runtime::Runtime`] runs the chain between a [`source::Source`] and a
//! [`sink::Sink`]; records are decoded from and encoded to Kafka bytes by [`mod@format`].

pub mod aggregate;
pub mod checkpoint;
pub mod dedup;
pub mod driver;
pub mod dsl;
pub mod error;
mod exchange;
pub mod fk_join;
pub mod format;
pub mod join;
pub mod join_side;
pub mod kafka;
pub mod nexmark;
pub mod operator;
pub mod plan;
pub mod runtime;
pub mod session;
pub mod sink;
pub mod source;
pub mod store;
pub mod table_aggregate;
pub mod table_join;
pub mod top_n;
pub mod window;
pub mod window_join;

pub use aggregate::EmitMode;
pub use checkpoint::{CheckpointConfig, CheckpointStorage, Guarantee};
pub use error::{EngineError, Result};
pub use format::{Format, KafkaType};
pub use join::{JoinKind, JoinWindow};
pub use kafka::{KafkaCluster, KafkaSink, KafkaSource};
pub use runtime::{Query, QueryHandle, QueryMetrics, QueryOptions, Runtime};
pub use sink::{Collector, CountSink, Sink, StdoutSink, TopicFormat, TopicSink};
pub use source::{MemorySource, Source, SourceReader, StartFrom, TopicSource};
pub use store::TableStore;
pub use window::{WindowKind, WindowSpec};

/// DataFusion and Arrow as the engine uses them, so programs need no version of their own.
pub use {arrow, datafusion};

/// What a DSL program usually needs: the builder, formats, windows, the runtime, and
/// DataFusion's expression and aggregate functions.
pub mod prelude {
    pub use crate::driver::TopologyTestDriver;
    pub use crate::dsl::{Stream, StreamsBuilder, Table, Topology};
    pub use crate::{
        CheckpointConfig, CheckpointStorage, Collector, EmitMode, Format, Guarantee, JoinKind,
        KafkaType, QueryOptions, Runtime, TopicFormat, TopicSource, WindowKind, WindowSpec,
    };
    pub use datafusion::functions_aggregate::expr_fn::{avg, count, max, min, sum};
    pub use datafusion::prelude::{Expr, col, lit};
}
