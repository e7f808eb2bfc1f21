//! `shoal import FILE`: a local file becomes a verified task in the daemon, so a node with no way to the
//! origin (an air-gapped site, a pre-seeded cache) can seed a swarm. The file is hashed here, then served
//! from a loopback listener of this process, at a random path only the daemon is told, to the daemon,
//! which fetches it as it fetches any origin: the task is named by the sha256 and the bytes are verified
//! against it before the task completes. No new way into the daemon, and nothing it stores unverified.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::{GetError, GetOptions, GetReport};

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The sha256 of `path`, read in 1 MiB blocks.
pub async fn sha256_of(path: &Path) -> Result<[u8; 32], GetError> {
    let err = |source| GetError::File { path: path.to_owned(), source };
    let mut f = tokio::fs::File::open(path).await.map_err(err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    // Bounded by the file's length.
    loop {
        let n = f.read(&mut buf).await.map_err(err)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

/// Imports `file` into the daemon `o.daemon` (whose other options apply); `digest` is checked against the
/// file first when given.
pub async fn import(file: PathBuf, digest: Option<String>, o: &GetOptions) -> Result<GetReport, GetError> {
    let sha = hex::encode(sha256_of(&file).await?);
    if let Some(d) = &digest {
        if d.strip_prefix("sha256:") != Some(sha.as_str()) {
            return Err(GetError::Mismatch(sha));
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| GetError::File { path: file.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| GetError::File { path: file.clone(), source })?;
    // Any local process can reach a loopback port: the file is served only at a path nobody can guess.
    let mut secret = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| GetError::Embedded("no randomness for the import's path".into()))?;
    let path = format!("/import/{}/{sha}", hex::encode(secret));
    let serving = tokio::spawn(serve(listener, Arc::new(file), Arc::new(path.clone())));
    let get = GetOptions {
        url: format!("http://{addr}{path}"),
        output: None,
        digest: Some(format!("sha256:{sha}")),
        ..o.clone()
    };
    let r = super::run(&get).await;
    serving.abort();
    r
}

/// Serves `file` at `path` (404 elsewhere) until aborted (the daemon's fetch; Range is not offered, so it
/// takes one connection).
async fn serve(listener: tokio::net::TcpListener, file: Arc<PathBuf>, path: Arc<String>) {
    // Ends when the import aborts this task.
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        let (file, path) = (file.clone(), path.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let wanted = req.uri().path() == path.as_str();
                answer(file.clone(), wanted)
            });
            let io = hyper_util::rt::TokioIo::new(sock);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
    }
}

async fn answer(file: Arc<PathBuf>, wanted: bool) -> Result<Response<Body>, std::convert::Infallible> {
    if !wanted {
        let mut r = Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed());
        *r.status_mut() = StatusCode::NOT_FOUND;
        return Ok(r);
    }
    let opened = async {
        let f = tokio::fs::File::open(&*file).await?;
        let len = f.metadata().await?.len();
        Ok::<_, std::io::Error>((f, len))
    };
    Ok(match opened.await {
        Ok((f, len)) => {
            use futures_util::TryStreamExt;
            let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).map_ok(Frame::data);
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut().insert(http::header::CONTENT_LENGTH, len.into());
            r
        }
        Err(e) => {
            let mut r = Response::new(Full::new(Bytes::from(e.to_string())).map_err(|n| match n {}).boxed());
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    })
}
