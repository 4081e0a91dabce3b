//! Test support, behind the `testing` feature: a real NATS server and sample events.

mod nats_server;
mod samples;

pub use nats_server::NatsServer;
pub use samples::{encode_as_version, sample_envelope, sample_events};
