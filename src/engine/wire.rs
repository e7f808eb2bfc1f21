//! HTTP/1.1 GETs to origins whose bodies the caller reads straight into its own memory.
//!
//! hyper reads a response into a buffer of its own and hands the body out in frames; an origin download
//! then copied every frame into a page-aligned piece buffer: one more pass over each byte than the
//! kernel's receive copy (6% of a cold download's CPU in a profile, and the page faults of the buffers
//! it filled). A back-to-source body is the one exchange where that pass is worth saving, so its GETs
//! speak HTTP/1.1 here: the request written whole, the head parsed by httparse, and the body read by
//! [`RawBody::read`] into whatever slice the caller gives, framed by Content-Length, chunked coding or
//! the connection's end (RFC 9112 §6.3).
//!
//! Connections are dialled through the same connector as the engine's hyper client (destination policy,
//! connect timeout, rustls with ALPN `http/1.1`), and a connection whose body was read to its end is
//! kept for the next GET to the same origin for up to [`IDLE`]. While a body's length says more is due,
//! its socket wakes the reader only once a few milliseconds of it are queued ([`crate::gather`]).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Request, StatusCode, Uri, Version};
use http_body_util::Empty;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

use super::error::EngineError;
use super::framing::BodyError;
use super::framing::{clamp, framing, parse_head, step_chunked, Chunk, Framing, Parsed, MAX_HEAD};
use crate::gather::Gather;
use crate::upstream::{denial_in, error_chain, tls_refusal_in, Https};

/// What a connection is: an origin's TCP or TLS stream, or bytes in memory when fuzzed.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP socket under the stream, for socket options; none for bytes in memory.
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

impl Io for Dialled {
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        Some(match self.inner() {
            MaybeHttpsStream::Http(tcp) => tcp.inner().as_fd(),
            MaybeHttpsStream::Https(tls) => tls.inner().get_ref().0.inner().inner().as_fd(),
        })
    }
}

/// A connection to an origin, plain or TLS (one dynamic call per read: a read fills up to a piece).
type Conn = Box<dyn Io>;

/// What the connector dials.
type Dialled = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// How long an idle connection is kept for reuse (hyper's client in the engine keeps its own as long).
const IDLE: Duration = Duration::from_secs(30);
/// Idle connections kept per origin: more than the ranged connections one download opens.
const IDLE_PER_ORIGIN: usize = 16;
/// Bytes asked of the socket at a time when reading a head, a chunk-size line or a trailer.
const READ_AHEAD: usize = 16 << 10;

/// Idle connections by origin (`scheme://authority`), and the connector that dials new ones.
pub(super) struct Wire {
    https: Https,
    idle: Mutex<HashMap<String, Vec<(Instant, Conn)>>>,
    /// How long a connection is kept idle ([`IDLE`]; shorter in tests).
    keep: Duration,
    /// A sweeper task runs: it closes expired connections even when no GET comes to look at them.
    sweeping: AtomicBool,
}

impl Wire {
    pub(super) fn new(https: Https) -> Arc<Wire> {
        Self::keeping(https, IDLE)
    }

    fn keeping(https: Https, keep: Duration) -> Arc<Wire> {
        Arc::new(Wire { https, idle: Mutex::new(HashMap::new()), keep, sweeping: AtomicBool::new(false) })
    }

    /// Sends `req` (a GET, HEAD-less: no request body) and reads the response head; the body is left for
    /// [`RawBody::read`]. A kept connection that the origin closed while idle (nothing of a head came
    /// back) is retried once on a new one: a GET may be sent again. The caller bounds the wait.
    pub(super) async fn exchange(
        self: &Arc<Self>,
        req: &Request<Empty<Bytes>>,
    ) -> Result<http::Response<RawBody>, EngineError> {
        let key = origin_key(req.uri());
        let wire = encode_request(req)?;
        let kept = self.take(&key);
        let reused = kept.is_some();
        let conn = match kept {
            Some(c) => c,
            None => self.dial(req.uri()).await?,
        };
        match send(conn, &wire).await {
            Ok(head) => Ok(self.response(head, key)),
            Err(SendError::Stale(_)) if reused => {
                let conn = self.dial(req.uri()).await?;
                send(conn, &wire).await.map(|head| self.response(head, key)).map_err(SendError::into_engine)
            }
            Err(e) => Err(e.into_engine()),
        }
    }

    fn response(self: &Arc<Self>, head: Head, key: String) -> http::Response<RawBody> {
        let Head { status, version, headers, conn, rest, framing } = head;
        // Both lengths on one answer is how response smuggling starts (RFC 9112 §6.1): read it, never reuse.
        let both = headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH);
        let keep = version == Version::HTTP_11 && !closes(&headers) && !both && !matches!(framing, Framing::Close);
        let reuse = keep.then(|| (self.clone(), key));
        let body = RawBody { conn: Some(conn), buf: rest, framing, reuse, gather: Gather::new() };
        let mut resp = http::Response::new(body);
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        resp
    }

    async fn dial(&self, uri: &Uri) -> Result<Conn, EngineError> {
        let host = uri.host().unwrap_or("").to_owned();
        let mut https = self.https.clone();
        match https.call(uri.clone()).await {
            Ok(s) => Ok(Box::new(Dialled::new(s))),
            Err(e) => Err(dial_error(&host, &*e)),
        }
    }

    fn take(&self, key: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        list.retain(|(since, _)| since.elapsed() < self.keep);
        let c = list.pop().map(|(_, c)| c);
        if list.is_empty() {
            idle.remove(key);
        }
        c
    }

    fn put(self: &Arc<Self>, key: String, conn: Conn) {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let list = idle.entry(key).or_default();
            if list.len() < IDLE_PER_ORIGIN {
                list.push((Instant::now(), conn));
            }
        }
        self.sweep_later();
    }

    /// Closes the expired idle connections of every origin; whether any is left.
    fn sweep(&self) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, l| {
            l.retain(|(since, _)| since.elapsed() < self.keep);
            !l.is_empty()
        });
        !idle.is_empty()
    }

    /// Starts the sweeper unless one runs: without it, connections left idle when downloads stop would
    /// stay open until the next GET to the same origin (hyper's pool needed a timer for the same reason).
    fn sweep_later(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let (wire, period) = (Arc::downgrade(self), self.keep / 2);
        rt.spawn(async move {
            // Bounded: ends once no connection is idle (at most `keep` after the last one was put), or
            // when the client is gone.
            loop {
                tokio::time::sleep(period).await;
                let Some(w) = wire.upgrade() else { return };
                if !w.sweep() {
                    w.sweeping.store(false, Ordering::Release);
                    // A connection put between the sweep and the flag's reset starts no sweeper: look again.
                    if !w.sweep() || w.sweeping.swap(true, Ordering::AcqRel) {
                        return;
                    }
                }
            }
        });
    }
}

/// Why reaching `host` failed, as the engine says it: the destination policy's refusal, TLS, or the rest.
/// Shared with the hyper client's requests, whose errors wrap the same connector's.
pub(super) fn dial_error(host: &str, e: &(dyn std::error::Error + 'static)) -> EngineError {
    match (denial_in(e), tls_refusal_in(host, e)) {
        (Some(d), _) => EngineError::Denied(d.clone()),
        (None, Some(t)) => EngineError::OriginTls(t),
        (None, None) => EngineError::OriginConnect(error_chain(e)),
    }
}

/// `scheme://authority`: connections are shared only within one origin.
fn origin_key(uri: &Uri) -> String {
    format!("{}://{}", uri.scheme_str().unwrap_or("http"), uri.authority().map_or("", |a| a.as_str()))
}

/// Whether the answer's Connection header says the origin closes the connection after it.
fn closes(h: &HeaderMap) -> bool {
    h.get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

/// The request line and headers of `req` for the wire, with a Host header from its URI.
fn encode_request(req: &Request<Empty<Bytes>>) -> Result<Vec<u8>, EngineError> {
    let uri = req.uri();
    let host = uri.host().ok_or_else(|| EngineError::InvalidHeader("host".into()))?;
    let default_port = if uri.scheme_str() == Some("https") { 443 } else { 80 };
    let mut w = Vec::with_capacity(512);
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    w.extend_from_slice(format!("{} {target} HTTP/1.1\r\nhost: {host}", req.method()).as_bytes());
    if let Some(p) = uri.port_u16().filter(|&p| p != default_port) {
        w.extend_from_slice(format!(":{p}").as_bytes());
    }
    w.extend_from_slice(b"\r\n");
    for (n, v) in req.headers() {
        w.extend_from_slice(n.as_str().as_bytes());
        w.extend_from_slice(b": ");
        w.extend_from_slice(v.as_bytes());
        w.extend_from_slice(b"\r\n");
    }
    w.extend_from_slice(b"\r\n");
    Ok(w)
}

/// A response head read off a connection, with what was read past it.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    conn: Conn,
    rest: BytesMut,
    framing: Framing,
}

enum SendError {
    /// Nothing of a head came back (the origin closed a kept connection while it was idle).
    Stale(std::io::Error),
    Io(std::io::Error),
    Malformed(String),
}

impl SendError {
    fn into_engine(self) -> EngineError {
        match self {
            SendError::Stale(e) | SendError::Io(e) => EngineError::OriginConnect(error_chain(&e)),
            SendError::Malformed(why) => EngineError::OriginProtocol(why),
        }
    }
}

async fn send(mut conn: Conn, wire: &[u8]) -> Result<Head, SendError> {
    conn.write_all(wire).await.map_err(SendError::Stale)?;
    conn.flush().await.map_err(SendError::Stale)?;
    let mut buf = BytesMut::with_capacity(READ_AHEAD);
    let mut got_any = false;
    // Bounded by MAX_HEAD per head (every turn reads at least one byte, parses a head, or fails) and, for
    // an origin sending interim answers without end, by the caller's head timeout.
    loop {
        if let Some((n, head)) = parse_head(&buf).map_err(SendError::Malformed)? {
            buf.advance(n);
            if head.status.is_informational() {
                continue; // 100 Continue and the like: the real answer follows.
            }
            let framing = framing(head.status, &head.headers).map_err(SendError::Malformed)?;
            let Parsed { status, version, headers } = head;
            return Ok(Head { status, version, headers, conn, rest: buf, framing });
        }
        if buf.len() >= MAX_HEAD {
            return Err(SendError::Malformed(format!("response head over {MAX_HEAD} bytes")));
        }
        buf.reserve(READ_AHEAD);
        match conn.read_buf(&mut buf).await {
            Ok(0) if !got_any => return Err(SendError::Stale(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(0) => return Err(SendError::Malformed("connection closed inside the response head".into())),
            Ok(_) => got_any = true,
            Err(e) if !got_any => return Err(SendError::Stale(e)),
            Err(e) => return Err(SendError::Io(e)),
        }
    }
}

/// A response body on its connection. Dropped before its end, the connection closes with it.
pub struct RawBody {
    conn: Option<Conn>,
    /// Bytes read off the connection and not yet consumed (after the head, or around chunk-size lines).
    buf: BytesMut,
    framing: Framing,
    /// Where the connection goes once the body is read to its end, when it may be kept.
    reuse: Option<(Arc<Wire>, String)>,
    /// How many bytes the socket gathers before it wakes this reader.
    gather: Gather,
}

impl RawBody {
    /// Reads body bytes into `dst` (not empty); `Ok(0)` once the body has ended. A connection closed
    /// before the body's announced end is an error, never a clean end.
    pub async fn read(&mut self, dst: &mut [u8]) -> Result<usize, BodyError> {
        // Bounded: each turn consumes framing bytes, delivers data, or ends; a chunk line is capped.
        loop {
            match self.framing {
                Framing::Length(0) | Framing::Chunked(Chunk::Done) => {
                    self.release();
                    return Ok(0);
                }
                Framing::Length(left) => {
                    if self.buf.is_empty() {
                        let fd = self.conn.as_ref().and_then(|c| c.socket());
                        self.gather.before_read(fd, left);
                    }
                    let want = clamp(dst.len(), left);
                    let n = self.marked_data(&mut dst[..want]).await?;
                    if n == 0 {
                        return Err(BodyError::Short(left));
                    }
                    self.gather.read(n);
                    self.framing = Framing::Length(left - n as u64);
                    return Ok(n);
                }
                Framing::Close => return self.data(dst).await.map_err(BodyError::Io),
                Framing::Chunked(Chunk::Data(left)) => {
                    let want = clamp(dst.len(), left);
                    let n = self.data(&mut dst[..want]).await?;
                    if n == 0 {
                        return Err(BodyError::ChunkedShort);
                    }
                    let rest = left - n as u64;
                    self.framing = Framing::Chunked(if rest == 0 { Chunk::DataEnd } else { Chunk::Data(rest) });
                    return Ok(n);
                }
                Framing::Chunked(state) => match step_chunked(&state, &mut self.buf)? {
                    Some(next) => self.framing = Framing::Chunked(next),
                    None => self.fill().await?,
                },
            }
        }
    }

    /// [`RawBody::data`] under the receive mark's guard: a read that waits [`crate::gather::GUARD`] with
    /// a mark set gives the mark up and reads on without it. A read cancelled by the guard took nothing
    /// (a socket read is cancel-safe), so the next one sees the same bytes.
    async fn marked_data(&mut self, dst: &mut [u8]) -> std::io::Result<usize> {
        let Some(guard) = self.gather.guard() else { return self.data(dst).await };
        if let Ok(r) = tokio::time::timeout(guard, self.data(dst)).await {
            return r;
        }
        if !self.gather.give_up(self.conn.as_ref().and_then(|c| c.socket())) {
            // A socket that keeps its mark must not be reused; this body may still finish on it.
            self.reuse = None;
        }
        self.data(dst).await
    }

    /// Body bytes into `dst`: what is buffered first, else straight from the socket. 0 at the socket's end.
    async fn data(&mut self, dst: &mut [u8]) -> std::io::Result<usize> {
        if !self.buf.is_empty() {
            let n = dst.len().min(self.buf.len());
            dst[..n].copy_from_slice(&self.buf[..n]);
            self.buf.advance(n);
            return Ok(n);
        }
        match self.conn.as_mut() {
            Some(c) => c.read(dst).await,
            None => Ok(0),
        }
    }

    /// More framing bytes into the buffer; the connection's end here is an error.
    async fn fill(&mut self) -> Result<(), BodyError> {
        let Some(c) = self.conn.as_mut() else { return Err(BodyError::ChunkedShort) };
        self.buf.reserve(READ_AHEAD);
        match c.read_buf(&mut self.buf).await? {
            0 => Err(BodyError::ChunkedShort),
            _ => Ok(()),
        }
    }

    /// For a reader that stops at a length it knew (a segment's last piece): when that was the body's
    /// end, the connection is kept for the next GET without another read.
    pub fn release_if_done(&mut self) {
        if self.framing == Framing::Length(0) {
            self.release();
        }
    }

    /// The body has ended: the connection goes back for reuse when nothing follows it.
    fn release(&mut self) {
        if let (Some((wire, key)), Some(conn)) = (self.reuse.take(), self.conn.take()) {
            if self.buf.is_empty() && self.gather.end(conn.socket()) {
                wire.put(key, conn);
            }
        }
    }
}

/// Reads `wire` as an origin's answer to a GET, taking at most `slice` bytes of the body per read and
/// getting at most `chunk` bytes per socket read: the status and the body, or why either was refused.
/// For tests and the fuzz target; never panics, whatever the bytes.
pub(crate) async fn decode(wire: &[u8], chunk: usize, slice: usize) -> Result<(u16, Vec<u8>), String> {
    let conn: Conn = Box::new(Trickle { data: wire.to_vec(), at: 0, chunk: chunk.max(1) });
    let head = send(conn, b"GET / HTTP/1.1\r\n\r\n").await.map_err(|e| e.into_engine().to_string())?;
    let status = head.status.as_u16();
    let mut body =
        RawBody { conn: Some(head.conn), buf: head.rest, framing: head.framing, reuse: None, gather: Gather::new() };
    let (mut out, mut dst) = (Vec::new(), vec![0u8; slice.max(1)]);
    // Bounded by the input: every read returns at least one byte of it, or the body ends or fails.
    loop {
        match body.read(&mut dst).await {
            Ok(0) => return Ok((status, out)),
            Ok(n) => out.extend_from_slice(&dst[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Bytes in memory served a few at a time, as a socket might; writes are discarded.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    chunk: usize,
}

impl Io for Trickle {}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = self.chunk.min(buf.remaining()).min(self.data.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        std::task::Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
