//! Back to source: fetching a task's bytes from its origin over HTTP(S).
//!
//! One sequential GET by default: it works with origins that ignore Range or send no Content-Length
//! (giftless does both). A Range request is only trusted when the answer is a 206 whose Content-Range
//! matches what was asked; a 200 to a Range request means "Range unsupported", never "here is your range"
//! (origins that ignore Range corrupted Dragonfly's multi-piece files).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, HOST, RANGE};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::future::Future;

use super::budget::{IngestBudget, Reservation};
use super::error::EngineError;
use super::pace::Pace;
use super::wire::{dial_error, RawBody, Wire};
use crate::metrics::{self, Metrics};
use crate::storage::buf::{self, PieceBuf};
use crate::storage::{Task, TaskState};
use crate::upstream::{https_connector, https_connector_with, Destinations, Https, HOP_BY_HOP};

/// Client headers that a back-to-source GET sets itself: the whole object, identity-encoded, from its host.
const SET_BY_THE_FETCH: &[&str] = &["host", "range", "if-range", "accept-encoding"];

/// An HTTP(S) client for origins, shared by every task of a daemon.
#[derive(Clone)]
pub struct OriginClient {
    client: Client<Https, Empty<Bytes>>,
    /// GETs whose body becomes pieces: read straight into piece buffers (see `wire`).
    wire: Arc<Wire>,
    head_timeout: Duration,
}

/// What a GET to the origin answered with a success status.
pub struct OriginResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Length of the whole object when the origin said it (Content-Length of a 200, or the total of a 206).
    pub content_length: Option<u64>,
    /// A 206 whose Content-Range matches the request: the origin serves ranges correctly.
    pub range_proven: bool,
    /// Offset of the body's first byte in the object: the range's start for a proven 206, else 0.
    pub start: u64,
    /// For a proven 206, the offset of the body's last byte.
    pub end: Option<u64>,
    body: RawBody,
}

impl OriginResponse {
    /// The body, for callers that read it themselves ([`RawBody::read`]).
    pub fn into_body(self) -> RawBody {
        self.body
    }
}

impl OriginClient {
    /// `connect_timeout` bounds TCP connect and `head_timeout` the wait for the response head; TLS verifies
    /// against the system's roots (or `SSL_CERT_FILE`).
    pub fn new(
        connect_timeout: Duration,
        head_timeout: Duration,
        destinations: Arc<Destinations>,
    ) -> Result<OriginClient, EngineError> {
        let https = https_connector(connect_timeout, destinations)
            .map_err(|e| EngineError::OriginConnect(format!("TLS roots: {e}")))?;
        Ok(Self::from_connector(https, head_timeout))
    }

    /// [`OriginClient::new`] verifying origins' certificates with `tls` (`upstream::client_tls`).
    pub fn with_tls(
        connect_timeout: Duration,
        head_timeout: Duration,
        destinations: Arc<Destinations>,
        tls: &rustls::ClientConfig,
    ) -> OriginClient {
        Self::from_connector(https_connector_with(connect_timeout, destinations, tls), head_timeout)
    }

    fn from_connector(https: Https, head_timeout: Duration) -> OriginClient {
        // The timer is what enforces the idle timeout: without one, hyper-util drops an expired idle
        // connection only when the pool is next asked for that origin, so a burst's connections (and their
        // descriptors) stayed open for good once the load stopped (scripts/soak.sh showed it).
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https.clone());
        OriginClient { client, wire: Wire::new(https), head_timeout }
    }

    /// GET `url` with the client's `headers` (hop-by-hop ones dropped) and an optional byte range.
    /// A non-success status is an error carrying the status and headers, for the proxy to pass through.
    pub async fn get(
        &self,
        url: &str,
        headers: &[(String, String)],
        range: Option<(u64, Option<u64>)>,
    ) -> Result<OriginResponse, EngineError> {
        self.get_if(url, headers, range, None).await
    }

    /// [`OriginClient::get`] of a range of the representation that `validator` (a strong ETag or a
    /// Last-Modified date, from an earlier answer) names, sent as `If-Range`: if the object changed since,
    /// the origin answers 200 with the whole new one, which is not `range_proven`.
    pub async fn get_if(
        &self,
        url: &str,
        headers: &[(String, String)],
        range: Option<(u64, Option<u64>)>,
        validator: Option<&HeaderValue>,
    ) -> Result<OriginResponse, EngineError> {
        let mut extra = Vec::new();
        if let Some((start, end)) = range {
            let spec = match end {
                Some(e) => format!("bytes={start}-{e}"),
                None => format!("bytes={start}-"),
            };
            extra.push((RANGE, HeaderValue::from_str(&spec).map_err(|_| EngineError::BadRange)?));
            if let Some(v) = validator {
                extra.push((http::header::IF_RANGE, v.clone()));
            }
        }
        let (parts, body) =
            self.follow(Raw(self), Method::GET, url, headers, SET_BY_THE_FETCH, &extra).await?.into_parts();
        if !parts.status.is_success() {
            return Err(EngineError::OriginStatus { status: parts.status, headers: Box::new(parts.headers) });
        }
        let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let (content_length, range_proven, start, last) = match (parts.status, range) {
            (StatusCode::PARTIAL_CONTENT, Some((start, end))) => {
                let (s, e, total) =
                    parse_content_range(parts.headers.get(CONTENT_RANGE)).ok_or(EngineError::BadRange)?;
                // A range past the object's end is cut at its last byte (RFC 9110 14.1.2): then e is
                // the total's last byte, never anything else short of what was asked.
                let clamped = |want: u64| want > e && total.is_some_and(|t| e + 1 == t);
                if s != start
                    || end.is_some_and(|want| want != e && !clamped(want))
                    || declared.is_some_and(|d| d != e - s + 1)
                {
                    return Err(EngineError::BadRange);
                }
                (total, true, s, Some(e))
            }
            (StatusCode::PARTIAL_CONTENT, None) => return Err(EngineError::BadRange),
            _ => (declared, false, 0, None),
        };
        let (status, headers) = (parts.status, parts.headers);
        Ok(OriginResponse { status, headers, content_length, range_proven, start, end: last, body })
    }
}

impl OriginClient {
    /// Asks for `url` with `method` and the client's credentials, only for the status: a GET asks for one
    /// byte, and no body is read (dropped unread, the connection closes rather than being pooled).
    /// Conditional headers are left out: a 304 would say nothing about the right to read.
    pub(super) async fn probe(
        &self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<StatusCode, EngineError> {
        let extra = match method == Method::GET {
            true => vec![(RANGE, HeaderValue::from_static("bytes=0-0"))],
            false => Vec::new(),
        };
        let resp = self.follow(Hyper(self), method, url, headers, SET_BY_THE_PROBE, &extra).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(EngineError::OriginStatus { status, headers: Box::new(resp.into_parts().0.headers) });
        }
        Ok(status)
    }

    /// HEAD `url` with the client's headers and no redirect followed: the answer's status and headers as the
    /// origin gave them (a hub's resolve answer names the file's sha256 on its 302 to the CDN).
    pub async fn head_once(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<(StatusCode, HeaderMap), EngineError> {
        let req = build(Method::HEAD, url, headers, SET_BY_THE_PROBE)?;
        let (parts, _) = Hyper(self).send(req).await?.into_parts();
        Ok((parts.status, parts.headers))
    }

    /// Sends `method url` and follows the origin's redirects (at most [`MAX_REDIRECTS`]) within the same
    /// task: a registry's 307 to blob storage, a hub's 302 to its CDN. Credentials (Authorization, Cookie)
    /// go only to the origin they were sent to: a hop to another scheme, host or port drops them (the
    /// signed URL carries its own). A hop from https to http is refused: never a silent downgrade.
    async fn follow<E: Exchange>(
        &self,
        via: E,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        skip: &[&str],
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<http::Response<E::Body>, EngineError> {
        let first: Uri = url.parse().map_err(|e: http::uri::InvalidUri| EngineError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let mut at = first.clone();
        // Bounded by MAX_REDIRECTS.
        for hop in 0..=MAX_REDIRECTS {
            let cross = at.scheme() != first.scheme() || at.authority() != first.authority();
            let kept: Vec<(String, String)> = match cross {
                true => headers.iter().filter(|(n, _)| !is_credential(n)).cloned().collect(),
                false => headers.to_vec(),
            };
            let mut req = build(method.clone(), &at.to_string(), &kept, skip)?;
            for (n, v) in extra {
                req.headers_mut().insert(n.clone(), v.clone());
            }
            let resp = via.send(req).await?;
            let Some(next) = redirect_target(&at, &resp) else { return Ok(resp) };
            if hop == MAX_REDIRECTS {
                return Err(EngineError::TooManyRedirects(MAX_REDIRECTS));
            }
            if at.scheme_str() == Some("https") && next.scheme_str() != Some("https") {
                // Host and path only: a signed query is a credential.
                let to = format!("http://{}{}", next.authority().map(|a| a.as_str()).unwrap_or(""), next.path());
                return Err(EngineError::Downgrade { to });
            }
            tracing::debug!(from = %at.host().unwrap_or(""), to = %next.host().unwrap_or(""), "following the origin's redirect");
            at = next;
        }
        Err(EngineError::TooManyRedirects(MAX_REDIRECTS))
    }
}

/// How one request of a redirect chain goes to the origin; the wait for the answer's head is bounded.
trait Exchange {
    type Body;
    fn send(&self, req: Request<Empty<Bytes>>)
        -> impl Future<Output = Result<http::Response<Self::Body>, EngineError>>;
}

/// hyper's pooled client: probes and HEADs, whose bodies are not read.
struct Hyper<'a>(&'a OriginClient);

impl Exchange for Hyper<'_> {
    type Body = Incoming;
    async fn send(&self, req: Request<Empty<Bytes>>) -> Result<http::Response<Incoming>, EngineError> {
        let (host, timeout) = (req.uri().host().unwrap_or("").to_owned(), self.0.head_timeout);
        tokio::time::timeout(timeout, self.0.client.request(req))
            .await
            .map_err(|_| EngineError::OriginHeadTimeout(timeout))?
            .map_err(|e| dial_error(&host, &e))
    }
}

/// The wire: GETs whose bodies are read into piece buffers.
struct Raw<'a>(&'a OriginClient);

impl Exchange for Raw<'_> {
    type Body = RawBody;
    async fn send(&self, req: Request<Empty<Bytes>>) -> Result<http::Response<RawBody>, EngineError> {
        let timeout = self.0.head_timeout;
        tokio::time::timeout(timeout, self.0.wire.exchange(&req))
            .await
            .map_err(|_| EngineError::OriginHeadTimeout(timeout))?
    }
}

/// Redirect hops followed for one request (browsers and curl allow more; registries and hubs use one).
pub const MAX_REDIRECTS: usize = 5;

/// Headers that carry a client's credentials, sent only to the origin they were meant for.
fn is_credential(name: &str) -> bool {
    ["authorization", "cookie", "proxy-authorization"].iter().any(|c| name.eq_ignore_ascii_case(c))
}

/// Where a redirect answer points (absolute, or resolved against `base`); `None` for any other answer.
fn redirect_target<B>(base: &Uri, resp: &http::Response<B>) -> Option<Uri> {
    if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let loc = resp.headers().get(http::header::LOCATION)?.to_str().ok()?;
    resolve_location(base, loc)
}

/// `loc` as an absolute http(s) URL: absolute as given, `//host/path`, or a path on `base`'s origin.
pub(crate) fn resolve_location(base: &Uri, loc: &str) -> Option<Uri> {
    let u: Uri = if loc.starts_with("//") {
        format!("{}:{loc}", base.scheme_str()?).parse().ok()?
    } else if loc.starts_with('/') {
        format!("{}://{}{loc}", base.scheme_str()?, base.authority()?).parse().ok()?
    } else {
        loc.parse().ok()?
    };
    (matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some_and(|h| !h.is_empty())).then_some(u)
}

/// Client headers a probe leaves out: its own range, and the conditions that would turn a "may read"
/// into a 304 or a 412.
const SET_BY_THE_PROBE: &[&str] = &[
    "host",
    "range",
    "if-range",
    "accept-encoding",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
];

/// A request for an absolute http(s) `url` with the client's `headers`, minus hop-by-hop ones and those
/// in `skip` (which the caller sets itself).
fn build(
    method: Method,
    url: &str,
    headers: &[(String, String)],
    skip: &[&str],
) -> Result<Request<Empty<Bytes>>, EngineError> {
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| EngineError::InvalidUrl { url: url.to_owned(), reason: e.to_string() })?;
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
        return Err(EngineError::InvalidUrl { url: url.to_owned(), reason: "need an absolute http(s) URL".into() });
    }
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::new())
        .map_err(|e| EngineError::InvalidHeader(e.to_string()))?;
    for (name, value) in headers {
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| EngineError::InvalidHeader(name.clone()))?;
        if HOP_BY_HOP.contains(&n.as_str()) || skip.contains(&n.as_str()) {
            continue;
        }
        let v = HeaderValue::from_str(value).map_err(|_| EngineError::InvalidHeader(name.clone()))?;
        req.headers_mut().append(n, v);
    }
    req.headers_mut().remove(HOST);
    Ok(req)
}

/// `bytes S-E/T` → (S, E, Some(T)); `bytes S-E/*` → (S, E, None).
pub(crate) fn parse_content_range(v: Option<&HeaderValue>) -> Option<(u64, u64, Option<u64>)> {
    let v = v?.to_str().ok()?.strip_prefix("bytes ")?;
    let (range, total) = v.split_once('/')?;
    let (s, e) = range.split_once('-')?;
    let (s, e): (u64, u64) = (s.trim().parse().ok()?, e.trim().parse().ok()?);
    let total = if total.trim() == "*" { None } else { Some(total.trim().parse().ok()?) };
    if e < s || total.is_some_and(|t| e >= t) {
        return None;
    }
    Some((s, e, total.or(None)))
}

/// Streams a body into `task` from its start (piece 0 for a 200; for a proven 206 the piece its range
/// starts at, which must be a piece boundary: a resumed download), writing up to `in_flight` pieces at
/// once (in order, so the storage engine hashes them while they are hot); pieces already stored are
/// skipped. Fixes the length at the end when the origin did not announce one. Any shortfall or excess is
/// an error: never a silently short or long object; so is a body that delivers nothing for `idle`.
///
/// Each piece buffer (being filled, or on its way to the disk) holds a reservation on `budget`, so the
/// memory of every origin download of the daemon together stays bounded however many run at once.
pub async fn stream_into(
    task: &Arc<Task>,
    resp: OriginResponse,
    in_flight: usize,
    idle: Duration,
    budget: &IngestBudget,
) -> Result<u64, EngineError> {
    let _stream = budget.count_stream();
    stream_pieces(task, resp, None, &Streaming { in_flight, idle, budget, pace: None }).await
}

/// How a body is streamed into pieces (see [`stream_into`]).
#[derive(Clone, Copy)]
pub(super) struct Streaming<'a> {
    pub in_flight: usize,
    pub idle: Duration,
    pub budget: &'a IngestBudget,
    /// The probe of a download split over ranged connections, told of every byte delivered.
    pub pace: Option<&'a Pace>,
}

/// [`stream_into`], stopping after piece `end - 1` when `end` is set (one segment of a download split
/// over several ranged connections; the rest of the body, if any, is not read). A segment whose body
/// ends before `end` is an error. Returns the bytes this body delivered. The caller counts the stream in
/// the budget ([`IngestBudget::count_stream`], [`IngestBudget::try_widen`]).
pub(super) async fn stream_pieces(
    task: &Arc<Task>,
    resp: OriginResponse,
    end: Option<u32>,
    s: &Streaming<'_>,
) -> Result<u64, EngineError> {
    let mut writes = Writes::new();
    let n = stream_pieces_on(task, resp, end, s, &mut writes).await?;
    drain(&mut writes).await?;
    Ok(n)
}

/// Piece writes still in flight, oldest first.
pub(super) type Writes = VecDeque<tokio::task::JoinHandle<crate::storage::Result<()>>>;

/// Waits for every write in `writes`; the first error is the result.
pub(super) async fn drain(writes: &mut Writes) -> Result<(), EngineError> {
    while let Some(w) = writes.pop_front() {
        join(Some(w)).await?;
    }
    Ok(())
}

/// [`stream_pieces`], leaving the last pieces' writes in `writes` rather than waiting for them: a
/// connection that goes on to its next chunk keeps receiving while they are hashed and written (and
/// still has at most `in_flight` of them). Waiting at each 8 MiB chunk left the hash idle while the next
/// chunk's first piece arrived. The caller must [`drain`] `writes`.
pub(super) async fn stream_pieces_on(
    task: &Arc<Task>,
    resp: OriginResponse,
    end: Option<u32>,
    s: &Streaming<'_>,
    writes: &mut Writes,
) -> Result<u64, EngineError> {
    let pl = task.piece_length() as usize;
    let expected = task.content_length();
    if resp.start % pl as u64 != 0 || expected.is_some_and(|e| resp.start > e) {
        return Err(EngineError::BadRange);
    }
    let mut body = resp.body;
    let mut w = PieceWriter::new(task, s.in_flight, s.budget, resp.start, writes).await?;
    // Bounded by the body: every round consumes a frame or ends (or the segment is whole).
    while end.is_none_or(|e| w.k < e) {
        if let TaskState::Failed(r) = task.state() {
            return Err(EngineError::Storage(r.into()));
        }
        let n = match tokio::time::timeout(s.idle, body.read(w.room())).await {
            Err(_) => return Err(EngineError::OriginStalled { received: w.total, idle: s.idle }),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(EngineError::OriginBody { received: w.total, reason: e.to_string() }),
        };
        Metrics::add(&metrics::global().bytes_from_origin, n as u64);
        if let Some(p) = s.pace {
            p.delivered(n);
        }
        if let Some(exp) = expected.filter(|&e| w.total + n as u64 > e) {
            return Err(EngineError::TooLong { expected: exp });
        }
        w.filled(n).await?;
    }
    body.release_if_done();
    if let Some(e) = end.filter(|&e| w.k < e) {
        let want = u64::from(e) * pl as u64;
        return Err(EngineError::Truncated { expected: want, got: w.total });
    }
    if end.is_none() {
        if let Some(exp) = expected.filter(|&e| w.total != e) {
            return Err(EngineError::Truncated { expected: exp, got: w.total });
        }
        if expected.is_none() {
            // Full pieces may still be in flight; the length check in storage only needs them written later.
            task.set_content_length(w.total)?;
        }
    }
    w.finish();
    Ok(w.total - resp.start)
}

/// Cuts a stream of bytes into pieces and writes up to `in_flight` of them at once, each buffer holding
/// its share of the ingest budget until it is on disk.
struct PieceWriter<'a> {
    task: &'a Arc<Task>,
    pl: usize,
    in_flight: usize,
    budget: &'a IngestBudget,
    held: Reservation,
    /// Page-aligned and pooled: a full piece goes to the disk (O_DIRECT when the store ingests that way)
    /// and to waiting clients from this memory, with no further copy.
    buf: PieceBuf,
    /// The piece being filled, and the object offset after the last byte taken.
    k: u32,
    total: u64,
    writes: &'a mut Writes,
}

impl<'a> PieceWriter<'a> {
    async fn new(
        task: &'a Arc<Task>,
        in_flight: usize,
        budget: &'a IngestBudget,
        start: u64,
        writes: &'a mut Writes,
    ) -> Result<Self, EngineError> {
        let pl = task.piece_length() as usize;
        let k = u32::try_from(start / pl as u64).map_err(|_| EngineError::BadRange)?;
        let held = budget.reserve(pl).await;
        let buf = buf::take(pl);
        Ok(PieceWriter { task, pl, in_flight, budget, held, buf, k, total: start, writes })
    }

    /// Where the next body bytes go: the rest of the piece being filled.
    fn room(&mut self) -> &mut [u8] {
        self.buf.spare_mut()
    }

    /// `n` more bytes of [`PieceWriter::room`] were filled; a full piece goes to the disk.
    async fn filled(&mut self, n: usize) -> Result<(), EngineError> {
        self.buf.advance(n);
        self.total += n as u64;
        if self.buf.is_full() {
            let piece = std::mem::replace(&mut self.buf, PieceBuf::empty()).freeze();
            let held = std::mem::replace(&mut self.held, Reservation::none());
            self.spawn_write(piece, held);
            if self.writes.len() >= self.in_flight.max(1) {
                join(self.writes.pop_front()).await?;
            }
            self.held = self.budget.reserve(self.pl).await;
            self.buf = buf::take(self.pl);
        }
        Ok(())
    }

    fn spawn_write(&mut self, piece: Bytes, held: Reservation) {
        let (t, k) = (self.task.clone(), self.k);
        self.k += 1;
        self.writes.push_back(tokio::spawn(async move {
            let r = t.write_piece(k, piece, None).await;
            drop(held);
            r
        }));
    }

    /// Writes the last, short piece; the caller waits for the writes ([`drain`]).
    fn finish(&mut self) {
        if !self.buf.is_empty() {
            let held = std::mem::replace(&mut self.held, Reservation::none());
            let piece = std::mem::replace(&mut self.buf, PieceBuf::empty()).freeze();
            self.spawn_write(piece, held);
        }
    }
}

async fn join(h: Option<tokio::task::JoinHandle<crate::storage::Result<()>>>) -> Result<(), EngineError> {
    match h {
        Some(h) => match h.await {
            Ok(r) => r.map_err(EngineError::from),
            Err(e) => Err(EngineError::OriginBody { received: 0, reason: format!("piece write task: {e}") }),
        },
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_locations_resolve_against_the_answering_origin() {
        let base: Uri = "https://reg.example:5000/v2/a/blobs/sha256:00".parse().unwrap();
        let r = |l: &str| resolve_location(&base, l).map(|u| u.to_string());
        assert_eq!(r("https://s3.example/b?sig=1").as_deref(), Some("https://s3.example/b?sig=1"));
        assert_eq!(r("/other/path?x=1").as_deref(), Some("https://reg.example:5000/other/path?x=1"));
        assert_eq!(r("//cdn.example/x").as_deref(), Some("https://cdn.example/x"));
        for bad in ["ftp://x/y", "relative/path", "", "http://", "https:///nohost"] {
            assert_eq!(r(bad), None, "{bad}");
        }
        assert!(is_credential("Authorization") && is_credential("cookie") && !is_credential("accept"));
    }

    #[test]
    fn content_range_parsing() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(parse_content_range(Some(&h("bytes 0-99/1000"))), Some((0, 99, Some(1000))));
        assert_eq!(parse_content_range(Some(&h("bytes 5-9/*"))), Some((5, 9, None)));
        assert_eq!(parse_content_range(Some(&h("bytes 9-5/100"))), None);
        assert_eq!(parse_content_range(Some(&h("bytes 0-100/100"))), None);
        assert_eq!(parse_content_range(Some(&h("items 0-1/2"))), None);
        assert_eq!(parse_content_range(None), None);
    }
}
