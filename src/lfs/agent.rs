//! The agent's loop: git-lfs starts one process per worker, sends init, then one object at a time and
//! waits for its `complete`. A download is asked of the batch API (a standalone agent gets no action),
//! then fetched through the local daemon keyed and verified by its oid (P2P, cached), or, with no daemon,
//! by an engine in this process; the file is handed to git-lfs in its own tmp directory, which it renames
//! into its store after checking the sha256 itself. An upload is a batch call, a PUT and a verify.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

use super::api::Api;
use super::protocol::{parse, Operation, Reply, Request, WireError, MAX_LINE};
use super::LfsError;
use crate::client::{GetError, GetOptions};

/// Bytes moved since the last call.
pub type Progress = Arc<dyn Fn(usize) + Send + Sync>;

/// Where the agent sends objects and how long each may take.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The local daemon's proxy.
    pub daemon: String,
    /// The in-process engine's cache when no daemon answers.
    pub data_dir: PathBuf,
    pub timeout: Duration,
}

/// Where replies go: one line at a time, from this task or from a body being sent.
#[derive(Clone)]
pub struct Out(Arc<Mutex<Box<dyn std::io::Write + Send>>>);

impl Out {
    pub fn new(w: Box<dyn std::io::Write + Send>) -> Out {
        Out(Arc::new(Mutex::new(w)))
    }

    fn send(&self, r: &Reply<'_>) -> Result<(), LfsError> {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(r.line().as_bytes()).and_then(|_| w.flush()).map_err(LfsError::Stdout)
    }
}

/// Progress lines at most this often (git-lfs draws a bar from them; a line per socket read is noise).
const PROGRESS_STEP: u64 = 1 << 20;

/// Serves git-lfs until terminate or the end of input.
pub async fn run(o: &AgentOptions, mut input: impl AsyncBufRead + Unpin, out: Out) -> Result<(), LfsError> {
    let mut session: Option<(Operation, Api, PathBuf)> = None;
    loop {
        let Some(line) = read_line(&mut input).await? else { return Ok(()) };
        if line.trim().is_empty() {
            continue;
        }
        let req = match parse(&line) {
            Ok(r) => r,
            // Not a message we can answer per object: git-lfs gets the reason on stderr and an exit code.
            Err(e) => return Err(LfsError::Protocol(e)),
        };
        match req {
            Request::Init { operation, remote, .. } => {
                let r = init(operation, &remote).await;
                let error = r.as_ref().err().map(|e| e.wire());
                out.send(&Reply::Init { error })?;
                session = r.ok();
            }
            Request::Terminate => return Ok(()),
            Request::Download { oid, size, .. } => {
                let r = match &session {
                    Some((_, api, tmp)) => download(o, api, tmp, &oid, size, &out).await,
                    None => Err(LfsError::NotInitialised),
                };
                complete(&out, &oid, r.map(|p| Some(p.to_string_lossy().into_owned())))?;
            }
            Request::Upload { oid, size, path, .. } => {
                let r = match &session {
                    Some((_, api, _)) => upload(api, &oid, size, &path, &out).await.map(|_| None),
                    None => Err(LfsError::NotInitialised),
                };
                complete(&out, &oid, r)?;
            }
        }
    }
}

/// One line, at most [`MAX_LINE`] bytes; `None` at the end of input.
async fn read_line(input: &mut (impl AsyncBufRead + Unpin)) -> Result<Option<String>, LfsError> {
    let mut buf = Vec::new();
    let n = (&mut *input).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf).await.map_err(LfsError::Stdin)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        return Err(LfsError::Protocol(super::protocol::ProtocolError::TooLong));
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| LfsError::Protocol(super::protocol::ProtocolError::Malformed("not UTF-8".into())))
}

fn complete(out: &Out, oid: &str, r: Result<Option<String>, LfsError>) -> Result<(), LfsError> {
    match r {
        Ok(path) => out.send(&Reply::done(oid, path)),
        Err(e) => {
            tracing::warn!(oid, error = %e, "transfer failed");
            out.send(&Reply::failed(oid, e.wire()))
        }
    }
}

async fn init(op: Operation, remote: &str) -> Result<(Operation, Api, PathBuf), LfsError> {
    let endpoint = super::endpoint::resolve(remote)?;
    let api = Api::new(endpoint, op).await?;
    tracing::debug!(endpoint = api.endpoint(), operation = op.as_str(), "agent ready");
    Ok((op, api, lfs_tmp_dir()?))
}

/// git-lfs's tmp directory (on the file system of its object store, so its rename works).
fn lfs_tmp_dir() -> Result<PathBuf, LfsError> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--git-common-dir"])
        .output()
        .map_err(|e| LfsError::Repository(e.to_string()))?;
    let git_dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || git_dir.is_empty() {
        return Err(LfsError::Repository("not inside a git repository".into()));
    }
    let git_dir = std::fs::canonicalize(&git_dir).map_err(|e| LfsError::Repository(e.to_string()))?;
    let lfs = match super::endpoint::lfs_config("lfs.storage") {
        Some(s) => git_dir.join(s),
        None => git_dir.join("lfs"),
    };
    let tmp = lfs.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| LfsError::Repository(format!("{}: {e}", tmp.display())))?;
    Ok(tmp)
}

/// A progress callback that turns byte counts into throttled progress lines for `oid`.
fn progress_lines(out: &Out, oid: &str, size: u64) -> Progress {
    let (out, oid) = (out.clone(), oid.to_owned());
    let sent = Arc::new(Mutex::new((0u64, 0u64)));
    Arc::new(move |n: usize| {
        let mut s = sent.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += n as u64;
        if s.0 - s.1 >= PROGRESS_STEP || s.0 == size {
            let _ = out.send(&Reply::progress(&oid, s.0, s.0 - s.1));
            s.1 = s.0;
        }
    })
}

async fn download(
    o: &AgentOptions,
    api: &Api,
    tmp: &Path,
    oid: &str,
    size: u64,
    out: &Out,
) -> Result<PathBuf, LfsError> {
    let actions = api.batch(Operation::Download, oid, size).await?;
    let action = actions.transfer.ok_or(LfsError::Object { code: 404, message: "no download action".into() })?;
    let headers = api.transfer_headers(&action).await?.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let output = tmp.join(format!("shoal-{oid}-{}", std::process::id()));
    let step = progress_lines(out, oid, size);
    let last = Arc::new(Mutex::new(0u64));
    let progress: crate::client::Progress = Arc::new(move |total: u64| {
        let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
        step(total.saturating_sub(*l) as usize);
        *l = total;
    });
    let g = GetOptions {
        url: action.href.clone(),
        output: Some(output.clone()),
        daemon: o.daemon.clone(),
        data_dir: o.data_dir.clone(),
        digest: Some(format!("sha256:{oid}")),
        headers,
        filtered_query_params: Vec::new(),
        timeout: o.timeout,
        progress: Some(progress),
        // git-lfs hashes the file before it keeps it; the daemon verified it before ending the body.
        hash_here: false,
    };
    let r = crate::client::run(&g).await.map_err(LfsError::Download)?;
    if r.bytes != size {
        let _ = std::fs::remove_file(&output);
        return Err(LfsError::Object { code: 422, message: format!("got {} bytes, the pointer says {size}", r.bytes) });
    }
    tracing::debug!(oid, source = %r.source, "downloaded");
    Ok(output)
}

async fn upload(api: &Api, oid: &str, size: u64, path: &Path, out: &Out) -> Result<(), LfsError> {
    let actions = api.batch(Operation::Upload, oid, size).await?;
    let Some(put) = actions.transfer else {
        // The server has it already.
        return Ok(());
    };
    let file =
        tokio::fs::File::open(path).await.map_err(|e| LfsError::Repository(format!("{}: {e}", path.display())))?;
    api.upload(&put, file, size, progress_lines(out, oid, size)).await?;
    if let Some(v) = actions.verify {
        api.verify(&v, oid, size).await?;
    }
    Ok(())
}

impl LfsError {
    /// The error as git-lfs shows it for one object: an HTTP status where there is one.
    pub fn wire(&self) -> WireError {
        let code = match self {
            LfsError::Object { code, .. } => *code,
            LfsError::Server { status, .. } => *status,
            LfsError::AuthFailed(_) | LfsError::NoCredentials(_) => 401,
            LfsError::Download(GetError::Status { status, .. }) => status.as_u16(),
            _ => 1,
        };
        WireError { code, message: self.to_string() }
    }
}
