//! The AICP agent worker: pulls assigned tasks from `AICP_WORK`, executes them with the
//! agent's executor (`simulate`, `exec` or `http`), reports the start and the outcome to
//! the coordinator with its worker token, and acks only once the outcome is recorded.
//! Stateless: run as many as the queues need.

pub mod config;
pub mod executor;
pub mod report;
pub mod worker;

pub use config::Config;
pub use worker::Worker;
