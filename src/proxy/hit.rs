//! The zero-copy fast path: complete local hits are answered on the raw socket with sendfile.
//!
//! Owns: reading each request head of a connection before hyper sees it. When the head is a body-less
//! HTTP/1.1 GET that routes P2P and names a task that is complete on this node, the status line and headers
//! are written here and the body goes out with `ZeroCopy::send_to` (sendfile: no copy through user space);
//! then the next request on the connection is read the same way. Anything else — misses, pass-through,
//! CONNECT, 416, malformed or oversized heads — is handed to hyper together with the bytes already read,
//! and hyper serves the rest of the connection. Never: answers anything it would have to stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::lifecycle::LiveRules;
use super::respond::{parse_range, RangeAsk};
use super::rules::{Route, Rules};
use crate::engine::Engine;
use crate::metrics::{self, Metrics};

/// What the fast path did with a connection.
pub enum Outcome {
    /// The client closed, timed out or failed: nothing more to do.
    Done,
    /// Not ours to answer: hyper serves the connection from here (the bytes read so far come first).
    Hyper(Rewind),
}

/// A socket with bytes already read from it put back in front, whose writes fail once the client has
/// accepted nothing for `stall` (a client that stops reading cannot pin a response forever).
pub struct Rewind {
    prefix: BytesMut,
    sock: TcpStream,
    stall: Duration,
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Rewind {
    /// The socket as is, nothing read yet.
    pub fn new(sock: TcpStream, stall: Duration) -> Rewind {
        Rewind { prefix: BytesMut::new(), sock, stall, stalled_since: None }
    }

    fn write_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let stall = self.stall;
        let timer = self.stalled_since.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.sock).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.sock).poll_write(cx, buf) {
            Poll::Pending => self.write_stalled(cx),
            done => {
                self.stalled_since = None;
                done
            }
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sock).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sock).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.sock).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.write_stalled(cx),
            done => {
                self.stalled_since = None;
                done
            }
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.sock.is_write_vectored()
    }
}

/// A hit to answer: the head to write and the byte range to send after it.
struct Answer {
    head: String,
    offset: u64,
    len: u64,
    task: Arc<crate::storage::Task>,
    close: bool,
}

/// Serves complete local hits on `sock` until a request needs hyper, the client leaves, or it is idle for
/// `idle` (which also bounds reading one head). Heads larger than `max_head` go to hyper (which answers 431).
/// Once `stop` turns true (a drain), the connection closes after its current response.
pub async fn serve(
    mut sock: TcpStream,
    engine: &Arc<Engine>,
    rules: &LiveRules,
    idle: Duration,
    max_head: usize,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Outcome {
    let mut buf = BytesMut::with_capacity(8 << 10);
    // One round per request; ends on close, timeout, error or hand-off.
    loop {
        let answer = loop {
            match decide(&buf, engine, &rules.current(), *stop.borrow()) {
                Decision::Partial if buf.len() < max_head => {}
                Decision::Partial | Decision::Hyper => {
                    return Outcome::Hyper(Rewind { prefix: buf, sock, stall: idle, stalled_since: None })
                }
                Decision::Hit(used, a) => {
                    buf.advance(used);
                    break a;
                }
            }
            let read = tokio::select! {
                r = tokio::time::timeout(idle, sock.read_buf(&mut buf)) => r,
                // Draining: a connection between requests closes; a head already arriving is answered.
                _ = super::lifecycle::stopped(stop), if buf.is_empty() => return Outcome::Done,
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                // Closed, failed or idle: a half-read head gets no answer, as with hyper's timeout.
                _ => return Outcome::Done,
            }
        };
        if sock.write_all(answer.head.as_bytes()).await.is_err() {
            return Outcome::Done;
        }
        let sent = match answer.task.zero_copy_range(answer.offset, answer.len).await {
            Ok(zc) => send_paced(&zc, &sock, idle).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            // The head promised a length: closing is the only honest way to say the body failed.
            tracing::debug!(task = %answer.task.id(), error = %e, "zero-copy body failed");
            return Outcome::Done;
        }
        tracing::debug!(task = %answer.task.id(), bytes = answer.len, "zero-copy hit sent");
        if answer.close {
            let _ = sock.shutdown().await;
            return Outcome::Done;
        }
    }
}

/// Sends `zc` in 1 MiB slices, failing when one slice takes longer than `stall` (a client that stops
/// reading).
async fn send_paced(zc: &crate::storage::ZeroCopy, sock: &TcpStream, stall: Duration) -> Result<(), String> {
    const SLICE: u64 = 1 << 20;
    let mut off = 0;
    // Bounded by the range's length: every round sends a slice or fails.
    while off < zc.len {
        let n = SLICE.min(zc.len - off);
        let part = zc.slice(off, n).ok_or("range slice out of bounds")?;
        match tokio::time::timeout(stall, part.send_to(sock)).await {
            Ok(Ok(_)) => {
                off += n;
                Metrics::add(&metrics::global().bytes_served, n);
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("client stopped reading".into()),
        }
    }
    Ok(())
}

enum Decision {
    /// The head is not complete yet.
    Partial,
    /// Someone else's request (or not a request we understand): hyper answers it.
    Hyper,
    /// A complete local hit whose head took this many bytes.
    Hit(usize, Answer),
}

fn decide(buf: &[u8], engine: &Arc<Engine>, rules: &Rules, closing: bool) -> Decision {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Decision::Partial,
        Err(_) => return Decision::Hyper,
    };
    let (Some("GET"), Some(path), Some(1)) = (req.method, req.path, req.version) else { return Decision::Hyper };
    let Ok(uri) = path.parse::<http::Uri>() else { return Decision::Hyper };
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
        return Decision::Hyper;
    }
    let header = |name: &str| {
        req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| std::str::from_utf8(h.value).ok())
    };
    // A GET with a body or an If-Range to compare: hyper's path decides.
    for name in ["content-length", "transfer-encoding", "if-range", "expect"] {
        if header(name).is_some() {
            return Decision::Hyper;
        }
    }
    let header_digest = match header("x-shoal-digest") {
        None => None,
        // Malformed: hyper's path answers 400.
        Some(v) => match v.and_then(|v| v.strip_prefix("sha256:")).and_then(super::server::parse_hex32) {
            Some(d) => Some(d),
            None => return Decision::Hyper,
        },
    };
    let extra = match header("x-shoal-filtered-query-params") {
        None => None,
        // Malformed: hyper's path answers 400.
        Some(v) => match v.and_then(super::rules::parse_extra_filtered) {
            Some(names) => Some(names),
            None => return Decision::Hyper,
        },
    };
    let Route::P2p { identity, expected_sha256, .. } =
        rules.route_with(&http::Method::GET, &uri, header_digest, extra.as_deref())
    else {
        return Decision::Hyper;
    };
    let Some(task) = engine.store().get(&identity.task_id).filter(|t| t.is_complete()) else {
        return Decision::Hyper;
    };
    // Content that is not what the client expects is never sent from here.
    if expected_sha256.is_some_and(|e| task.sha256() != Some(e)) {
        return Decision::Hyper;
    }
    let Some(len) = task.content_length() else { return Decision::Hyper };
    let range = match header("range") {
        None => RangeAsk::Whole,
        Some(Some(v)) => parse_range(v, len),
        Some(None) => return Decision::Hyper,
    };
    let close = closing
        || header("connection").flatten().is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
    let (status, offset, n, content_range) = match range {
        RangeAsk::Whole => ("200 OK", 0, len, String::new()),
        RangeAsk::Part(s, e) => {
            ("206 Partial Content", s, e + 1 - s, format!("Content-Range: bytes {s}-{e}/{len}\r\n"))
        }
        RangeAsk::Unsatisfiable => return Decision::Hyper,
    };
    task.touch();
    metrics::global().proxy_response(if offset == 0 && n == len { 200 } else { 206 });
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n{content_range}\
         Accept-Ranges: bytes\r\nX-Shoal-Task-Id: {}\r\nX-Shoal-Source: local\r\n{}\r\n",
        task.id().to_hex(),
        if close { "Connection: close\r\n" } else { "" },
    );
    Decision::Hit(used, Answer { head, offset, len: n, task, close })
}
