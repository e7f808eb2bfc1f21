//! Git LFS without per-host set-up: `shoal lfs install` makes git-lfs hand every object to `shoal lfs
//! agent`, a standalone custom transfer agent (git-lfs's protocol on stdin and stdout) that calls the
//! remote's batch API itself and fetches downloads through the local daemon, keyed and verified by oid.
//!
//! Owns: the transfer protocol (protocol.rs), finding a remote's LFS API (endpoint.rs; ssh remotes in
//! ssh.rs), git's credentials (credential.rs), the API calls (api.rs), the loop (agent.rs) and the git
//! config it writes and removes (install.rs).
//! Never: stores objects itself; downloads go through `client` (the daemon, or an in-process engine).
//! Called by: main.rs only.

mod agent;
mod api;
mod credential;
mod endpoint;
mod install;
mod protocol;

/// One line of git-lfs's custom-transfer protocol, parsed (for the fuzz target `crate::fuzzing`).
pub(crate) use protocol::parse as parse_protocol_line;
mod ssh;

pub use agent::{run as run_agent, AgentOptions, Out};
pub use endpoint::{from_url as endpoint_from_url, Endpoint};
pub use install::{install, uninstall, Scope};

/// Everything the agent and the installer fail with; each says whose side failed.
#[derive(Debug, thiserror::Error)]
pub enum LfsError {
    #[error("no LFS endpoint for {0:?}: set lfs.url, or use an https or ssh remote")]
    NoEndpoint(String),
    #[error("git-lfs sent {0}")]
    Protocol(#[from] protocol::ProtocolError),
    #[error("a transfer before init")]
    NotInitialised,
    #[error("reading from git-lfs: {0}")]
    Stdin(std::io::Error),
    #[error("writing to git-lfs: {0}")]
    Stdout(std::io::Error),
    #[error("the repository: {0}")]
    Repository(String),
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("cannot reach the LFS server at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("the LFS server's answer makes no sense: {0}")]
    BadAnswer(String),
    #[error("the LFS server answered {status}: {message}")]
    Server { status: u16, message: String },
    #[error("the LFS server refused the object ({code}): {message}")]
    Object { code: u16, message: String },
    #[error("authentication failed for {0}: the server refused the credentials git gave")]
    AuthFailed(String),
    #[error("authentication required for {0} and git's credential helpers gave none")]
    NoCredentials(String),
    #[error("git credential: {0}")]
    CredentialHelper(String),
    #[error("ssh to {login}: {why}")]
    Ssh { login: String, why: String },
    #[error("download: {0}")]
    Download(crate::client::GetError),
    #[error("git config: {0}")]
    GitConfig(String),
    #[error("lfs.standalonetransferagent is already {0:?}; `git config --unset lfs.standalonetransferagent` first")]
    OtherAgent(String),
}
