//! The client commands: `topics`, `produce` and `consume`, each generic over
//! [`crate::client::Client`] so that it works the same on every backend; and `groups` and
//! `transactions`, which only a running broker can answer; `connect`, which runs connectors; and `shell`, which runs Quiver SQL.

pub mod connect;
pub mod consume;
pub mod groups;
pub mod produce;
pub mod shell;
pub mod topics;
pub mod transactions;
