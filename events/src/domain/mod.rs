//! Pure domain rules: no I/O, no clocks, no randomness. Everything here is decided from
//! its arguments alone, so it is unit- and property-tested without a server.

pub mod access;
pub mod assign;
pub mod budget;
pub mod ledger;
pub mod pricing;
pub mod reputation;
pub mod task;
