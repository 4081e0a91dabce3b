//! The AICP operator CLI (`aicp`): stream setup, replay, verify, inspection.
//!
//! Not built yet (issue 5): this crate holds the place the workspace layout gives it.
