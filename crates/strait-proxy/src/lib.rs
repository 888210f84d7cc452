//! Strait's data plane.

pub mod balance;
pub mod route;
