//! The client commands: `topics`, `produce` and `consume`. Each is generic over
//! [`crate::client::Client`], so it works the same on every backend.

pub mod consume;
pub mod produce;
pub mod topics;
