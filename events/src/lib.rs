//! AICP's event-sourced core.
//!
//! - [`event`]: the catalogue of facts, [`envelope`]: their metadata, [`codec`]: the wire
//!   format, [`upcast`]: older schema versions.
//! - [`domain`]: the pure rules (task state machine, pricing, reputation, ledger, assignment).
//! - [`subject`]: stream and subject names, [`store`]: the JetStream event store.
//! - `testing` (feature `testing`): a real `nats-server` for tests.

pub mod codec;
pub mod domain;
pub mod envelope;
pub mod event;
pub mod id;
pub mod store;
pub mod subject;
#[cfg(feature = "testing")]
pub mod testing;
pub mod upcast;

pub use envelope::Envelope;
pub use event::Event;
pub use store::{Appended, EventStore, Expected};
pub use subject::{Aggregate, Namespace};
