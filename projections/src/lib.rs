//! AICP read models: projections of the `AICP_EVENTS` stream into sled.
//!
//! Not built yet (issue 3): this crate holds the place the workspace layout gives it.
