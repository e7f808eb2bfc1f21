//! The HTTP forward-proxy front: the node's door for git, `shoal get` and other HTTP clients.
//!
//! Owns: listeners (one per core, server.rs), request rules and task identity (rules.rs), the one request
//! plan (plan.rs), pass-through and CONNECT tunnels (forward.rs), TLS interception of the CONNECTs to
//! listed hosts (intercept.rs), streaming responses (respond.rs), the bound on clients that stop reading
//! (stall.rs), rule reloads and the graceful drain (lifecycle.rs).
//! Never: touches task files except through the engine's task handles. Called by: the daemon.

pub mod forward;
pub mod hub;
pub mod intercept;
pub mod lifecycle;
pub mod mirror;
pub mod plan;
pub mod respond;
pub mod rules;
pub mod server;
mod stall;
