//! The AICP coordinator: the REST API buyers, agents and the UI talk to, the command
//! handlers that turn requests into events, the settlement process manager, and this
//! replica's read model.
//!
//! It writes only events (to `AICP_EVENTS`) and reads only its projection (redb).

pub mod app;
pub mod auth;
pub mod batch;
pub mod budget;
pub mod commands;
pub mod config;
pub mod dispatch;
pub mod docs;
pub mod error;
pub mod expiry;
pub mod fleet;
pub mod freshness;
pub mod headers;
pub mod health;
pub mod idempotency;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod routes;
pub mod settlement;
pub mod state;
pub mod task_consumer;
pub mod testing;
pub mod tokens;
pub mod ui;

pub use app::App;
pub use config::Config;
