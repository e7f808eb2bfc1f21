//! Piece geometry: how a content length splits into pieces. Pure arithmetic, shared by writer and readers.

/// Smallest piece chosen automatically. 4 MiB is a good sendfile unit and keeps a piece's crc32c check and
/// its in-memory buffer cheap, while giving a 256 MiB object 64 pieces to spread over parents.
pub const MIN_AUTO_PIECE: u32 = 4 << 20;
/// Largest piece chosen automatically; beyond this a lost piece costs too much to refetch.
pub const MAX_AUTO_PIECE: u32 = 64 << 20;
/// Aim for at most this many pieces per task before pieces grow past the minimum.
pub const TARGET_PIECES: u64 = 1024;
/// Piece length when the origin does not say how long the content is.
pub const UNKNOWN_LENGTH_PIECE: u32 = MIN_AUTO_PIECE;
/// Piece-table capacity reserved for a task of unknown length (the metadata file is sparse, so unused
/// entries cost no disk): 65536 × 4 MiB = 256 GiB.
pub const UNKNOWN_LENGTH_CAPACITY: u32 = 1 << 16;
/// Bounds accepted for an explicit piece length (tests and benchmarks use small pieces).
pub const MIN_PIECE: u32 = 16 << 10;
pub const MAX_PIECE: u32 = 1 << 30;
/// Upper bound on a piece table, so a corrupt header can never make us map or allocate absurd sizes.
pub const MAX_PIECES: u32 = 1 << 24;

/// next_pow2(ceil(len / 1024)) clamped to [4 MiB, 64 MiB]: 4 MiB up to 4 GiB, then growing so that even a
/// 64 GiB object stays at 1024 pieces.
pub fn auto_piece_length(content_length: u64) -> u32 {
    let per = content_length.div_ceil(TARGET_PIECES).max(1);
    let p = per.checked_next_power_of_two().unwrap_or(u64::MAX);
    p.clamp(MIN_AUTO_PIECE as u64, MAX_AUTO_PIECE as u64) as u32
}

pub fn valid_piece_length(p: u32) -> bool {
    p.is_power_of_two() && (MIN_PIECE..=MAX_PIECE).contains(&p)
}

/// Number of pieces for a known length; an empty object still has zero pieces.
pub fn piece_count(content_length: u64, piece_length: u32) -> u64 {
    content_length.div_ceil(piece_length as u64)
}

/// Offset and length of piece `k`, given the content length.
pub fn piece_range(content_length: u64, piece_length: u32, k: u32) -> Option<(u64, u32)> {
    let off = k as u64 * piece_length as u64;
    if off >= content_length {
        return None;
    }
    Some((off, (content_length - off).min(piece_length as u64) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_piece_lengths() {
        assert_eq!(auto_piece_length(0), MIN_AUTO_PIECE);
        assert_eq!(auto_piece_length(1 << 30), MIN_AUTO_PIECE);
        assert_eq!(auto_piece_length(4 << 30), MIN_AUTO_PIECE);
        assert_eq!(auto_piece_length((4 << 30) + 1), 8 << 20);
        assert_eq!(auto_piece_length(1 << 40), MAX_AUTO_PIECE);
        assert_eq!(auto_piece_length(u64::MAX), MAX_AUTO_PIECE);
    }

    #[test]
    fn ranges_cover_content_exactly() {
        let (len, pl) = (10 * 1024 + 7, 1024);
        let n = piece_count(len, pl) as u32;
        assert_eq!(n, 11);
        let total: u64 = (0..n).map(|k| piece_range(len, pl, k).unwrap().1 as u64).sum();
        assert_eq!(total, len);
        assert_eq!(piece_range(len, pl, 10), Some((10 * 1024, 7)));
        assert_eq!(piece_range(len, pl, 11), None);
        assert_eq!(piece_count(0, pl), 0);
    }
}
