//! The HTTP forward-proxy front: the node's door for git, `shoal get` and other HTTP clients.
//!
//! Owns: listeners (one per core, server.rs), request rules and task identity (rules.rs), pass-through and
//! CONNECT (forward.rs), streaming responses (respond.rs), sendfile for complete local hits (hit.rs), rule
//! reloads and the graceful drain (lifecycle.rs).
//! Never: touches task files except through the engine's task handles. Called by: the daemon.

pub mod forward;
pub mod hit;
pub mod lifecycle;
pub mod respond;
pub mod rules;
pub mod server;
