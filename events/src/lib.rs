//! AICP's event-sourced core.
//!
//! - [`event`]: the catalogue of facts, [`envelope`]: their metadata, [`codec`]: the wire
//!   format, [`upcast`]: older schema versions.
//! - [`domain`]: the pure rules (task state machine, pricing, reputation, ledger, assignment,
//!   access).
//! - [`token`]: API tokens: made at random, stored only as hashes; [`hex`]: their hex text.
//! - [`subject`]: stream and subject names, [`store`]: the JetStream event store,
//!   [`work`]: the work messages of `AICP_WORK`, [`consumers`]: the durable consumers.
//! - `testing` (feature `testing`): a real `nats-server` for tests.
//!
//! Deciding and appending with optimistic concurrency:
//!
//! ```no_run
//! use aicp_events::domain::task::Task;
//! use aicp_events::event::TaskCancelled;
//! use aicp_events::store::AppendError;
//! use aicp_events::{Aggregate, Envelope, EventStore, Expected, Namespace};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let store = EventStore::connect("nats://127.0.0.1:4222", Namespace::default()).await?;
//! store.provision().await?; // create or update AICP_EVENTS and AICP_WORK
//!
//! let task_id: aicp_events::id::TaskId = "a1b2c3d4".parse()?;
//! let aggregate = Aggregate::Task(task_id.clone());
//! let stored = store.read(&aggregate).await?;
//! let task = Task::replay(stored.events().map(|e| &e.event))?.ok_or("no such task")?;
//!
//! let cancel = Envelope::new(TaskCancelled {
//!     task_id,
//!     buyer_id: task.buyer_id.clone(),
//!     reason: "no longer needed".into(),
//! });
//! task.check(&cancel.event)?; // a typed error if the task is already running
//! match store
//!     .append(&aggregate, &[cancel], Expected::Sequence(stored.last_sequence), None)
//!     .await
//! {
//!     Ok(appended) => println!("stored at sequence {}", appended.sequence),
//!     Err(AppendError::Conflict { .. }) => println!("someone else moved first: re-read"),
//!     Err(other) => return Err(other.into()),
//! }
//! # Ok(())
//! # }
//! ```

pub mod codec;
pub mod consumers;
pub mod credentials;
pub mod domain;
pub mod envelope;
pub mod event;
pub mod hex;
pub mod id;
pub mod request;
pub mod store;
pub mod subject;
#[cfg(feature = "testing")]
pub mod testing;
pub mod token;
pub mod upcast;
pub mod work;

pub use envelope::Envelope;
pub use event::Event;
pub use store::{Appended, EventStore, Expected};
pub use subject::{Aggregate, Namespace};
