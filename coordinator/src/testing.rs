//! For tests (this crate's and others'): the flags that start a coordinator tests can call.

/// The admin token test coordinators are configured with (never use it outside tests).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123456789";

/// Flags for a test coordinator: [`ADMIN_TOKEN`], and no rate limits (a test that measures
/// them sets its own; `args_override_self` lets later flags win).
pub const FLAGS: [&str; 6] = [
    "--admin-token",
    ADMIN_TOKEN,
    "--rate-limit",
    "off",
    "--rate-limit-ip",
    "off",
];
