//! The AICP coordinator: REST API, command handlers, process managers and the UI.
//!
//! Not built yet (issue 3): this crate holds the place the workspace layout gives it.
