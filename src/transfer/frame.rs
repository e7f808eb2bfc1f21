//! The control-frame codec: `[version u8][kind u8][len u32 BE][prost bytes]` (see proto/transfer.proto),
//! and a cancel-safe reader that also pulls raw piece payloads from the same buffered stream.
//!
//! Decoding validates everything a handler would otherwise have to re-check (lengths, task IDs), so a
//! handler only ever sees well-formed frames. Nothing here panics on input.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::error::{FrameError, ReadError};
use super::proto::{
    Availability, Error as ErrorMsg, ErrorCode, Have, Hello, PieceError, PieceHeader, PieceRequest, Subscribe,
    SubscriptionEnd, Unsubscribe,
};
use crate::gather::Gather;
use crate::storage::TaskId;

pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 6;
/// Default largest control frame; a bitmap of 8 M pieces fits.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;
/// Most pieces one Have may list, so a Have always fits any sane frame limit.
pub const MAX_HAVE: usize = 16 << 10;

/// One decoded control frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Hello(Hello),
    Request(PieceRequest),
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    Piece(PieceHeader),
    PieceError(PieceError),
    Availability(Availability),
    Have(Have),
    SubscriptionEnd(SubscriptionEnd),
    Error(ErrorMsg),
}

impl Frame {
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => 1,
            Frame::Request(_) => 2,
            Frame::Subscribe(_) => 3,
            Frame::Unsubscribe(_) => 4,
            Frame::Piece(_) => 5,
            Frame::PieceError(_) => 6,
            Frame::Availability(_) => 7,
            Frame::Have(_) => 8,
            Frame::SubscriptionEnd(_) => 9,
            Frame::Error(_) => 10,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::Request(_) => "PieceRequest",
            Frame::Subscribe(_) => "Subscribe",
            Frame::Unsubscribe(_) => "Unsubscribe",
            Frame::Piece(_) => "PieceHeader",
            Frame::PieceError(_) => "PieceError",
            Frame::Availability(_) => "Availability",
            Frame::Have(_) => "Have",
            Frame::SubscriptionEnd(_) => "SubscriptionEnd",
            Frame::Error(_) => "Error",
        }
    }

    /// A fatal error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Frame {
        Frame::Error(ErrorMsg { code: code as i32, message: message.into() })
    }

    /// Appends the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        fn put<M: Message>(kind: u8, m: &M, dst: &mut BytesMut) {
            let len = m.encoded_len();
            dst.reserve(HEADER_LEN + len);
            dst.put_u8(VERSION);
            dst.put_u8(kind);
            dst.put_u32(len as u32);
            // Cannot fail: BytesMut grows, and the space was reserved above.
            let _ = m.encode(dst);
        }
        let k = self.kind();
        match self {
            Frame::Hello(m) => put(k, m, dst),
            Frame::Request(m) => put(k, m, dst),
            Frame::Subscribe(m) => put(k, m, dst),
            Frame::Unsubscribe(m) => put(k, m, dst),
            Frame::Piece(m) => put(k, m, dst),
            Frame::PieceError(m) => put(k, m, dst),
            Frame::Availability(m) => put(k, m, dst),
            Frame::Have(m) => put(k, m, dst),
            Frame::SubscriptionEnd(m) => put(k, m, dst),
            Frame::Error(m) => put(k, m, dst),
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }
}

/// Decodes one frame from the front of `src`, consuming it. `Ok(None)`: more bytes are needed. An error
/// means the stream is unusable (there is no way to find the next frame boundary one can trust).
pub fn decode(src: &mut BytesMut, max_len: u32) -> Result<Option<Frame>, FrameError> {
    // The version and kind are checked as soon as they arrive, so garbage is refused without waiting for a
    // length's worth of bytes.
    if let Some(&v) = src.first() {
        if v != VERSION {
            return Err(FrameError::Version(v));
        }
    }
    if let Some(&k) = src.get(1) {
        if !(1..=10).contains(&k) {
            return Err(FrameError::UnknownKind(k));
        }
    }
    if src.len() < HEADER_LEN {
        return Ok(None);
    }
    let kind = src[1];
    let len = u32::from_be_bytes([src[2], src[3], src[4], src[5]]);
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let total = HEADER_LEN + len as usize;
    if src.len() < total {
        src.reserve(total - src.len());
        return Ok(None);
    }
    src.advance(HEADER_LEN);
    let body = src.split_to(len as usize).freeze();
    let frame = match kind {
        1 => Frame::Hello(Hello::decode(body)?),
        2 => {
            let m = PieceRequest::decode(body)?;
            task_id_of(&m.task_id)?;
            Frame::Request(m)
        }
        3 => {
            let m = Subscribe::decode(body)?;
            task_id_of(&m.task_id)?;
            Frame::Subscribe(m)
        }
        4 => {
            let m = Unsubscribe::decode(body)?;
            task_id_of(&m.task_id)?;
            Frame::Unsubscribe(m)
        }
        5 => {
            let m = PieceHeader::decode(body)?;
            task_id_of(&m.task_id)?;
            if m.length == 0 {
                return Err(FrameError::BadField { field: "length", reason: "a piece is never empty" });
            }
            Frame::Piece(m)
        }
        6 => Frame::PieceError(PieceError::decode(body)?),
        7 => {
            let m = Availability::decode(body)?;
            task_id_of(&m.task_id)?;
            Frame::Availability(m)
        }
        8 => {
            let m = Have::decode(body)?;
            task_id_of(&m.task_id)?;
            Frame::Have(m)
        }
        9 => Frame::SubscriptionEnd(SubscriptionEnd::decode(body)?),
        10 => Frame::Error(ErrorMsg::decode(body)?),
        k => return Err(FrameError::UnknownKind(k)),
    };
    Ok(Some(frame))
}

/// A wire task ID: exactly 32 bytes, never anything path-like.
pub fn task_id_of(b: &[u8]) -> Result<TaskId, FrameError> {
    <[u8; 32]>::try_from(b)
        .map(TaskId)
        .map_err(|_| FrameError::BadField { field: "task_id", reason: "must be 32 bytes" })
}

/// The bitmap of an Availability: bit k is byte k/8, mask 0x80 >> (k % 8).
pub fn bitmap(pieces: &[u32], count: u32) -> Vec<u8> {
    let mut b = vec![0u8; (count as usize).div_ceil(8)];
    for &k in pieces.iter().filter(|&&k| k < count) {
        b[(k / 8) as usize] |= 0x80 >> (k % 8);
    }
    b
}

/// The pieces set in a bitmap.
pub fn bitmap_pieces(b: &[u8]) -> Vec<u32> {
    let mut v = Vec::new();
    for (i, &byte) in b.iter().enumerate() {
        for bit in 0..8u32 {
            if byte & (0x80 >> bit) != 0 {
                v.push(i as u32 * 8 + bit);
            }
        }
    }
    v
}

/// Buffered frame reader over one half of a connection. `read_frame` is cancel-safe (bytes read so far stay
/// in the buffer), so callers may race it against timers.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_len: u32,
    /// How many payload bytes the socket gathers before it wakes [`FrameReader::read_payload`].
    gather: Gather,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_len: u32) -> Self {
        FrameReader { inner, buf: BytesMut::with_capacity(64 << 10), max_len, gather: Gather::new() }
    }

    pub fn set_max_len(&mut self, max_len: u32) {
        self.max_len = max_len;
    }

    /// True when part of a frame has arrived but not all of it.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next frame; `Ok(None)` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        // Each turn either decodes a frame, fails, or reads more bytes; the stream ends in finite reads.
        loop {
            if let Some(f) = decode(&mut self.buf, self.max_len)? {
                return Ok(Some(f));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 << 10);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(ReadError::Eof { mid_piece: false }) };
            }
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: AsyncRead + Unpin + AsRef<tokio::net::TcpStream>> FrameReader<R> {
    /// Exactly `len` raw bytes (a piece payload), failing if no byte arrives for `stall`. Read straight
    /// from the socket into a pooled, page-aligned piece buffer: storage can write it with O_DIRECT. The
    /// socket wakes this reader only once a few milliseconds' worth of the payload is queued.
    pub async fn read_payload(&mut self, len: usize, stall: Duration) -> Result<Bytes, ReadError> {
        let mut out = crate::storage::buf::take(len);
        let take = out.fill_from(&self.buf[..self.buf.len().min(len)]);
        self.buf.advance(take);
        self.gather.begin();
        // Bounded: each turn adds at least one byte, returns, or gives the mark up (once: none is set after).
        while !out.is_full() {
            let due = out.spare_mut().len() as u64;
            self.gather.before_read(Some(self.inner.as_ref().as_fd()), due);
            // With a mark set, a read that waits GUARD gives the mark up and the next turn reads without
            // it (a cancelled read took nothing); the stall bound applies to reads without a mark.
            let guard = self.gather.guard();
            match tokio::time::timeout(guard.unwrap_or(stall), self.inner.read(out.spare_mut())).await {
                Err(_) if guard.is_some() => {
                    if !self.gather.give_up(Some(self.inner.as_ref().as_fd())) {
                        return Err(ReadError::Io(io::Error::other("the socket's receive mark could not be reset")));
                    }
                }
                Err(_) => return Err(ReadError::Stalled),
                Ok(Err(e)) => return Err(ReadError::Io(e)),
                Ok(Ok(0)) => return Err(ReadError::Eof { mid_piece: true }),
                Ok(Ok(n)) => {
                    out.advance(n);
                    self.gather.read(n);
                }
            }
        }
        // The next frame's head must wake this reader at once; a socket that keeps its mark is closed.
        if !self.gather.end(Some(self.inner.as_ref().as_fd())) {
            return Err(ReadError::Io(io::Error::other("the socket's receive mark could not be reset")));
        }
        Ok(out.freeze())
    }
}

/// Resolves once a watch flag is true (or its sender is gone); holds no borrow across the await, so the
/// future stays `Send`.
pub(crate) async fn flag_set(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tid(b: u8) -> Vec<u8> {
        vec![b; 32]
    }

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello { max_in_flight: 16, max_frame_len: 1 << 20 }),
            Frame::Request(PieceRequest { id: 7, task_id: tid(1), piece: 3 }),
            Frame::Subscribe(Subscribe { task_id: tid(2) }),
            Frame::Unsubscribe(Unsubscribe { task_id: tid(2) }),
            Frame::Piece(PieceHeader {
                id: 7,
                task_id: tid(1),
                piece: 3,
                offset: 12 << 20,
                length: 4 << 20,
                crc32c: 0xdead_beef,
            }),
            Frame::PieceError(PieceError {
                id: 8,
                task_id: tid(1),
                piece: 9,
                code: ErrorCode::UnknownTask as i32,
                message: "x".into(),
            }),
            Frame::Availability(Availability {
                task_id: tid(3),
                content_length: Some(10),
                piece_length: 4 << 20,
                bitmap: bitmap(&[0, 9], 10),
                complete: false,
            }),
            Frame::Have(Have { task_id: tid(3), pieces: vec![1, 2, 3] }),
            Frame::SubscriptionEnd(SubscriptionEnd {
                task_id: tid(3),
                code: ErrorCode::TaskFailed as i32,
                message: String::new(),
            }),
            Frame::error(ErrorCode::BadFrame, "nope"),
        ]
    }

    #[test]
    fn round_trips_every_kind_even_byte_by_byte() {
        let mut wire = BytesMut::new();
        for f in samples() {
            f.encode(&mut wire);
        }
        let mut got = Vec::new();
        let mut buf = BytesMut::new();
        for &b in wire.iter() {
            buf.put_u8(b);
            while let Some(f) = decode(&mut buf, DEFAULT_MAX_FRAME).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, samples());
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_bad_version_kind_size_and_task_ids() {
        let mut b = BytesMut::from(&[2u8][..]);
        assert!(matches!(decode(&mut b, 100), Err(FrameError::Version(2))));
        let mut b = BytesMut::from(&[1u8, 0][..]);
        assert!(matches!(decode(&mut b, 100), Err(FrameError::UnknownKind(0))));
        let mut b = BytesMut::from(&[1u8, 2, 0, 0, 1, 0][..]);
        assert!(matches!(decode(&mut b, 100), Err(FrameError::TooLarge { len: 256, max: 100 })));
        let mut b = BytesMut::new();
        Frame::Subscribe(Subscribe { task_id: b"../../etc/passwd".to_vec() }).encode(&mut b);
        assert!(matches!(decode(&mut b, 100), Err(FrameError::BadField { field: "task_id", .. })));
    }

    /// A parent on loopback that runs `script` on the one connection it accepts, and a [`FrameReader`] on
    /// the child's end of it (its write half kept open beside it).
    async fn parent_and_child<F, Fut>(
        script: F,
    ) -> (tokio::task::JoinHandle<()>, FrameReader<tokio::net::tcp::OwnedReadHalf>, tokio::net::tcp::OwnedWriteHalf)
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let parent = tokio::spawn(async move { script(l.accept().await.unwrap().0).await });
        let (rd, wr) = tokio::net::TcpStream::connect(addr).await.unwrap().into_split();
        (parent, FrameReader::new(rd, DEFAULT_MAX_FRAME), wr)
    }

    /// Piece `piece`'s header frame for a payload of `len` bytes, to which the caller appends the payload.
    fn piece_frame(piece: u32, len: u32) -> BytesMut {
        let mut b = BytesMut::new();
        Frame::Piece(PieceHeader { id: piece.into(), task_id: tid(1), piece, offset: 0, length: len, crc32c: 0 })
            .encode(&mut b);
        b
    }

    #[test]
    fn after_a_payload_read_with_a_receive_mark_the_next_small_frame_wakes_the_reader() {
        use tokio::io::AsyncWriteExt;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (parent, mut rd, _wr) = parent_and_child(|mut s| async move {
                for piece in 0..3u32 {
                    let mut b = piece_frame(piece, 4 << 20);
                    b.extend_from_slice(&vec![piece as u8; 4 << 20]);
                    s.write_all(&b).await.unwrap();
                }
                // Nothing else is due after the last payload: a small frame later must still wake the reader.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut b = BytesMut::new();
                Frame::Have(Have { task_id: tid(1), pieces: vec![3] }).encode(&mut b);
                s.write_all(&b).await.unwrap();
                let _ = s.read(&mut [0u8; 1]).await;
            })
            .await;
            for piece in 0..3u32 {
                let Some(Frame::Piece(h)) = rd.read_frame().await.unwrap() else { panic!("a piece header") };
                let data = rd.read_payload(h.length as usize, Duration::from_secs(10)).await.unwrap();
                assert!(data.len() == 4 << 20 && data.iter().all(|&b| b == piece as u8));
                assert_eq!(crate::gather::mark_of(rd.get_ref().as_ref().as_fd()), 1, "put back after the payload");
            }
            assert!(rd.gather.highest > 1, "loopback is fast enough that a mark was set within the payloads");
            let next = tokio::time::timeout(Duration::from_secs(5), rd.read_frame()).await.expect("woken at once");
            assert_eq!(next.unwrap(), Some(Frame::Have(Have { task_id: tid(1), pieces: vec![3] })));
            parent.abort();
        });
    }

    #[test]
    fn a_parent_that_pauses_with_bytes_under_the_mark_is_not_taken_for_stalled() {
        use tokio::io::AsyncWriteExt;
        const PAUSE: Duration = Duration::from_millis(600);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (parent, mut rd, _wr) = parent_and_child(|mut s| async move {
                let len = 4u32 << 20;
                // Two payloads at loopback speed: the third starts under the mark their rate sets.
                for piece in 0..2u32 {
                    let mut b = piece_frame(piece, len);
                    b.extend_from_slice(&vec![7u8; len as usize]);
                    s.write_all(&b).await.unwrap();
                }
                let mut b = piece_frame(2, len);
                b.extend_from_slice(&vec![7u8; 3 << 20]);
                s.write_all(&b).await.unwrap();
                // Then 100 KiB twice, PAUSE apart, each far under the mark, and the rest PAUSE later: bytes
                // arrive at least every PAUSE, but a reader asleep on the mark hears nothing for 2 PAUSE.
                tokio::time::sleep(Duration::from_millis(100)).await;
                for part in [100 << 10, 100 << 10, (1 << 20) - (200 << 10)] {
                    s.write_all(&vec![7u8; part]).await.unwrap();
                    tokio::time::sleep(PAUSE).await;
                }
                let _ = s.read(&mut [0u8; 1]).await;
            })
            .await;
            let given_up = crate::metrics::global().receive_marks_given_up.load(std::sync::atomic::Ordering::Relaxed);
            for piece in 0..3u32 {
                let Some(Frame::Piece(h)) = rd.read_frame().await.unwrap() else { panic!("a piece header") };
                // The stall bound sits between PAUSE and what a reader asleep on the mark would wait.
                let data = rd.read_payload(h.length as usize, PAUSE + Duration::from_millis(400)).await;
                let data = data.unwrap_or_else(|e| panic!("piece {piece}: {e}"));
                assert!(data.len() == 4 << 20 && data.iter().all(|&b| b == 7));
            }
            assert!(rd.gather.highest > 1, "a mark was set");
            let now = crate::metrics::global().receive_marks_given_up.load(std::sync::atomic::Ordering::Relaxed);
            assert!(now > given_up, "the mark given up is counted");
            parent.abort();
        });
    }

    #[test]
    fn bitmaps_round_trip() {
        let p = vec![0, 7, 8, 63, 64, 99];
        assert_eq!(bitmap_pieces(&bitmap(&p, 100)), p);
        assert_eq!(bitmap(&[5, 200], 8), vec![0x04]);
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..4096), max in 0u32..8192) {
            let mut b = BytesMut::from(&data[..]);
            // Bounded: every Ok(Some) consumes at least HEADER_LEN bytes.
            for _ in 0..data.len() + 1 {
                match decode(&mut b, max) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }

        #[test]
        fn decoder_never_panics_on_valid_headers_with_garbage_bodies(
            kind in 0u8..12, body in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let mut b = BytesMut::new();
            b.put_u8(VERSION);
            b.put_u8(kind);
            b.put_u32(body.len() as u32);
            b.extend_from_slice(&body);
            let _ = decode(&mut b, DEFAULT_MAX_FRAME);
        }

        #[test]
        fn requests_round_trip(id in any::<u64>(), piece in any::<u32>(), t in any::<u8>()) {
            let f = Frame::Request(PieceRequest { id, task_id: tid(t), piece });
            let mut b = BytesMut::new();
            f.encode(&mut b);
            prop_assert_eq!(decode(&mut b, DEFAULT_MAX_FRAME).unwrap(), Some(f));
        }
    }
}
