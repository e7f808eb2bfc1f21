//! The framing of an origin's HTTP/1.1 response, apart from any connection: its head parsed, how its
//! body is delimited (RFC 9112 §6.3), and the chunked coding stepped through a buffer.
//!
//! Owns: the limits on heads, chunk-size lines and trailers, and the body errors they raise. Never: reads
//! a socket (wire.rs does, and feeds these the bytes). Pure, so the fuzz target and the property tests of
//! wire_tests.rs reach every branch through `wire::decode`.

use bytes::{Buf, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, StatusCode, Version};

/// The largest response head (and, separately, trailer section) read: nginx's default is 8 KiB.
pub(super) const MAX_HEAD: usize = 64 << 10;
/// Headers parsed in one head.
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (with extensions) read before the chunk is refused.
const MAX_CHUNK_LINE: usize = 4 << 10;

/// A response head: what the status line and the header fields said.
pub(super) struct Parsed {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
}

/// A complete response head at the start of `buf`: its length and contents; `None` while partial.
pub(super) fn parse_head(buf: &[u8]) -> Result<Option<(usize, Parsed)>, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut slots);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    let status = r.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or("bad status code")?;
    let version = if r.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| format!("bad header name {:?}", h.name))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| format!("bad value of header {name}"))?;
        headers.append(name, value);
    }
    Ok(Some((n, Parsed { status, version, headers })))
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Framing {
    /// This many bytes remain.
    Length(u64),
    Chunked(Chunk),
    /// Until the origin closes the connection.
    Close,
}

/// Where a chunked body's reader stands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data: this many bytes remain.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// In the trailer section after the last chunk: this many bytes of it read so far.
    Trailers(usize),
    Done,
}

pub(super) fn framing(status: StatusCode, h: &HeaderMap) -> Result<Framing, String> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    if let Some(te) = h.get_all(TRANSFER_ENCODING).iter().next_back() {
        let te = te.to_str().map_err(|_| "bad Transfer-Encoding")?;
        let last = te.rsplit(',').next().unwrap_or("").trim();
        // A coding other than chunked last: the body runs to the connection's end (§6.3, point 4).
        return Ok(match last.eq_ignore_ascii_case("chunked") {
            true => Framing::Chunked(Chunk::Size),
            false => Framing::Close,
        });
    }
    let mut length = None;
    for v in h.get_all(CONTENT_LENGTH) {
        for part in v.to_str().map_err(|_| "bad Content-Length")?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("bad Content-Length {part:?}"));
            }
            let n: u64 = part.parse().map_err(|_| "Content-Length out of range")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length values".into());
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::Close, Framing::Length))
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed {0} bytes before the body's announced end")]
    Short(u64),
    #[error("connection closed inside a chunked body")]
    ChunkedShort,
    #[error("bad chunked coding: {0}")]
    Chunked(&'static str),
}

/// `len` cut to the `left` bytes a body or chunk still has.
pub(super) fn clamp(len: usize, left: u64) -> usize {
    usize::try_from(left).map_or(len, |l| len.min(l))
}

/// One step of a chunked body's framing from `buf`: the next state, or `None` when more bytes are needed.
pub(super) fn step_chunked(state: &Chunk, buf: &mut BytesMut) -> Result<Option<Chunk>, BodyError> {
    match state {
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete((n, size))) => {
                buf.advance(n);
                Ok(Some(if size == 0 { Chunk::Trailers(0) } else { Chunk::Data(size) }))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                Err(BodyError::Chunked("chunk-size line too long"))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(_) => Err(BodyError::Chunked("bad chunk-size line")),
        },
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(None);
            }
            if &buf[..2] != b"\r\n" {
                return Err(BodyError::Chunked("chunk data not followed by CRLF"));
            }
            buf.advance(2);
            Ok(Some(Chunk::Size))
        }
        Chunk::Trailers(seen) => match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let empty = i == 0 || (i == 1 && buf[0] == b'\r');
                buf.advance(i + 1);
                match (empty, seen + i + 1) {
                    (true, _) => Ok(Some(Chunk::Done)),
                    (false, total) if total > MAX_HEAD => Err(BodyError::Chunked("trailer section too long")),
                    (false, total) => Ok(Some(Chunk::Trailers(total))),
                }
            }
            None if seen + buf.len() > MAX_HEAD => Err(BodyError::Chunked("trailer section too long")),
            None => Ok(None),
        },
        // Not framing: RawBody::read handles these itself before asking.
        Chunk::Data(_) | Chunk::Done => Ok(Some(*state)),
    }
}
