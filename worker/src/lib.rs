//! The AICP agent worker: pulls assigned tasks from `AICP_WORK`, executes and reports them.
//!
//! Not built yet (issue 4): this crate holds the place the workspace layout gives it.
