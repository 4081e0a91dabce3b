//! Test support, behind the `testing` feature: a real NATS server, a real 3-node JetStream
//! cluster, and sample events.

mod nats_cluster;
mod nats_server;
mod samples;

pub use nats_cluster::NatsCluster;
pub use nats_server::NatsServer;
pub use samples::{encode_as_version, sample_envelope, sample_events, sample_submitted};
