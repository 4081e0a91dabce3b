//! AICP read models: the `AICP_EVENTS` stream projected into redb.
//!
//! - [`ReadModel`]: the tables of one redb file; [`ReadModel::apply`] applies one stream message
//!   atomically with its checkpoint, and the query methods read tasks, agents, buyers, the
//!   ledger and the dashboard's figures.
//! - [`projector`]: feeds a read model from the stream, in process, and tells waiters how
//!   far it has got.
//! - [`invariants`]: the money rules a read model's records must satisfy.
//! - [`notices`]: what the projector just applied, for live views.
//!
//! A read model is disposable: it can always be rebuilt from sequence 1 of the stream.

mod apply;
pub mod invariants;
pub mod notices;
pub mod projector;
mod query;
mod tables;
mod token_cache;
pub mod views;

pub use apply::{Applied, Message};
pub use query::{InvalidCursor, PageRequest, QueryError, TaskFilter};
pub use tables::{
    decode_u64, index_prefix, Changes, ProjectionError, ReadModel, Rows, Table, TreeDigest,
    DEFAULT_CACHE_MIB, FILE_NAME,
};
