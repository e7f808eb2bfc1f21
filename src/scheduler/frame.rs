//! Framing of the control protocol: u32 big-endian length, then a version byte and a prost `Envelope`.
//! The length prefix and its limit are tokio-util's LengthDelimitedCodec; this file adds the version byte.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::LengthDelimitedCodec;

use super::error::FrameError;
use super::proto::{envelope::Msg, Envelope};

/// The version byte every frame starts with. Bumped only for changes protobuf's own evolution rules cannot
/// absorb.
pub const PROTOCOL_VERSION: u8 = 1;

/// Largest frame either side accepts (the length prefix excluded). Real messages are a few KiB at most (a
/// signed URL and its headers, themselves capped below this); the limit bounds what one connection can make
/// the other side buffer, since a read buffer grows to the largest frame seen.
pub const MAX_FRAME_LEN: usize = 256 << 10;

/// The codec both sides use: u32 big-endian length prefix, frames above [`MAX_FRAME_LEN`] refused with an
/// `InvalidData` error before any of their bytes are buffered.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME_LEN).new_codec()
}

/// One frame's payload (without the length prefix, which the codec adds).
pub fn encode_envelope(msg: Msg) -> Bytes {
    let env = Envelope { msg: Some(msg) };
    let mut b = BytesMut::with_capacity(1 + env.encoded_len());
    b.put_u8(PROTOCOL_VERSION);
    // Encoding into a BytesMut grows it as needed, so this cannot fail.
    let _ = env.encode(&mut b);
    b.freeze()
}

/// Reads one frame's payload. `Ok(None)` is a well-formed envelope whose message this side does not know
/// (a newer peer): the caller answers with a non-fatal error instead of dropping the connection.
pub fn decode_envelope(frame: &[u8]) -> Result<Option<Msg>, FrameError> {
    let (&v, rest) = frame.split_first().ok_or(FrameError::Empty)?;
    if v != PROTOCOL_VERSION {
        return Err(FrameError::Version { got: v, ours: PROTOCOL_VERSION });
    }
    Ok(Envelope::decode(rest)?.msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::proto;

    #[test]
    fn round_trip_and_refusals() {
        let m = Msg::Load(proto::Load { upload_bytes_per_sec: 5, upload_connections: 2 });
        let f = encode_envelope(m.clone());
        assert_eq!(f[0], PROTOCOL_VERSION);
        assert_eq!(decode_envelope(&f).unwrap(), Some(m));
        assert!(matches!(decode_envelope(&[]), Err(FrameError::Empty)));
        assert!(matches!(decode_envelope(&[9, 0]), Err(FrameError::Version { got: 9, .. })));
        assert!(matches!(decode_envelope(&[1, 0x0a, 0xff]), Err(FrameError::Decode(_))));
        assert_eq!(decode_envelope(&[1]).unwrap(), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..2000usize {
            let mut buf = vec![PROTOCOL_VERSION];
            for _ in 0..(len % 97) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            let _ = decode_envelope(&buf);
        }
    }
}
