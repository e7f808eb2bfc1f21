//! Credentials for the LFS API from git's credential helpers (`git credential fill`, then `approve` when
//! the server took them or `reject` when it refused them), as git-lfs does. The password lives only in
//! this process and only in the Authorization header towards the host it was filled for.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::LfsError;

/// A helper that waits on a terminal we do not have (or hangs) is given up on after this.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// What git's credential helpers answered for one URL.
#[derive(Clone)]
pub struct Credential {
    /// The request's `protocol`, `host` and `path` lines, echoed back on approve/reject.
    ask: String,
    pub username: String,
    password: String,
}

impl std::fmt::Debug for Credential {
    // Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("username", &self.username).finish_non_exhaustive()
    }
}

impl Credential {
    /// The `Authorization` header value.
    pub fn basic(&self) -> String {
        use base64::Engine;
        let pair = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }

    /// Asks git's helpers for `url`'s credentials (`url` without userinfo, query or fragment).
    pub async fn fill(url: &http::Uri) -> Result<Credential, LfsError> {
        let ask = ask_lines(url);
        let out = helper("fill", &ask).await?;
        let field = |k: &str| out.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('=')).map(str::to_owned);
        match (field("username"), field("password")) {
            (Some(username), Some(password)) => Ok(Credential { ask, username, password }),
            _ => Err(LfsError::NoCredentials(redacted(url))),
        }
    }

    /// Tells the helpers the server accepted these (they may store them).
    pub async fn approve(&self) {
        let _ = helper("approve", &self.full()).await;
    }

    /// Tells the helpers the server refused these (they forget them).
    pub async fn reject(&self) {
        let _ = helper("reject", &self.full()).await;
    }

    fn full(&self) -> String {
        format!("{}username={}\npassword={}\n", self.ask, self.username, self.password)
    }
}

/// The URL without credentials or query, for messages.
pub fn redacted(url: &http::Uri) -> String {
    format!("{}://{}{}", url.scheme_str().unwrap_or("https"), url.host().unwrap_or(""), url.path())
}

fn ask_lines(url: &http::Uri) -> String {
    let host = match url.port_u16() {
        Some(p) => format!("{}:{p}", url.host().unwrap_or("")),
        None => url.host().unwrap_or("").to_owned(),
    };
    // git drops the path itself unless credential.useHttpPath asks for it.
    format!(
        "protocol={}\nhost={host}\npath={}\n",
        url.scheme_str().unwrap_or("https"),
        url.path().trim_start_matches('/')
    )
}

/// Runs `git credential <what>` with `input`; returns its stdout.
async fn helper(what: &str, input: &str) -> Result<String, LfsError> {
    let fail = |why: String| LfsError::CredentialHelper(why);
    let mut child = tokio::process::Command::new("git")
        .args(["credential", what])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let mut stdin = child.stdin.take().ok_or_else(|| fail("no stdin".into()))?;
    let input = format!("{input}\n");
    let run = async move {
        stdin.write_all(input.as_bytes()).await.map_err(|e| fail(e.to_string()))?;
        drop(stdin);
        child.wait_with_output().await.map_err(|e| fail(e.to_string()))
    };
    let out = tokio::time::timeout(HELPER_TIMEOUT, run).await.map_err(|_| fail("timed out".into()))??;
    if !out.status.success() {
        return Err(fail(format!("git credential {what} exited with {}", out.status)));
    }
    String::from_utf8(out.stdout).map_err(|_| fail("non-UTF-8 answer".into()))
}
