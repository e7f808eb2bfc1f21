//! ssh remotes: the LFS API's address and credentials come from `git-lfs-authenticate` run over ssh, as
//! git-lfs does (`ssh [-p port] login git-lfs-authenticate <path> <operation>`). The ssh program is
//! GIT_SSH_COMMAND (a shell command), else GIT_SSH, else `ssh`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::endpoint::SshTarget;
use super::protocol::Operation;
use super::LfsError;

/// ssh may ask for a host key or a passphrase on a terminal we do not have.
const SSH_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_ANSWER: usize = 1 << 20;

/// What git-lfs-authenticate prints.
#[derive(Debug, Deserialize)]
pub struct Authenticated {
    pub href: String,
    #[serde(default)]
    pub header: BTreeMap<String, String>,
}

pub async fn authenticate(t: &SshTarget, op: Operation) -> Result<Authenticated, LfsError> {
    let fail = |why: String| LfsError::Ssh { login: t.login.clone(), why };
    let mut args: Vec<String> = Vec::new();
    if let Some(p) = t.port {
        args.extend(["-p".into(), p.to_string()]);
    }
    // `--` is not used: some ssh ports do not take it; login and path never start with '-' (endpoint.rs).
    args.push(t.login.clone());
    args.push(format!("git-lfs-authenticate {} {}", shell_quote(&t.path), op.as_str()));
    let mut cmd = match (std::env::var("GIT_SSH_COMMAND").ok().filter(|c| !c.is_empty()), std::env::var_os("GIT_SSH")) {
        (Some(shell), _) => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c").arg(format!("{shell} \"$@\"")).arg("ssh");
            c
        }
        (None, Some(prog)) => tokio::process::Command::new(prog),
        (None, None) => tokio::process::Command::new("ssh"),
    };
    cmd.args(&args).stdin(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let out = tokio::time::timeout(SSH_TIMEOUT, cmd.output())
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(fail(err.lines().last().unwrap_or("ssh failed").to_owned()));
    }
    if out.stdout.len() > MAX_ANSWER {
        return Err(fail("an oversized answer".into()));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("git-lfs-authenticate answered: {e}")))
}

/// One argument for the remote shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
