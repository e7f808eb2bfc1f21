//! The check of an unfinished task after an unclean stop: before the store offers the task again, every
//! piece its table calls complete is read back and checked against its crc32c, and the pieces that fail
//! are cleared.
//!
//! Why at load and not lazily on first read (as for every other piece): after a power loss the piece
//! table may have reached the disk before the bytes it vouches for (the mapping is written back by the
//! kernel in any order relative to the content file). Left to the first read, the daemon would resume the
//! download after pieces it does not have, announce them to the scheduler, and a client streaming the
//! object would have its connection cut at the first bad piece. Only unfinished tasks left DIRTY are
//! scrubbed, so a clean restart, or one after kill -9 with a large complete cache, costs nothing; the
//! reads also mark the pieces checked, so the first client does not read them twice.

use std::os::unix::fs::FileExt;

use super::task::Task;

/// Bytes read per step: bounds the memory of a scrub whatever the piece length.
const CHUNK: usize = 1 << 20;

/// What a scrub found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scrub {
    /// Complete pieces read back whose bytes matched their crc.
    pub good: u32,
    /// Complete pieces whose bytes did not match (or could not be read): cleared, to be fetched again.
    pub cleared: u32,
}

/// Reads back every complete piece of `task` and clears those whose bytes fail their crc.
pub(super) fn scrub(task: &Task) -> Scrub {
    let mut report = Scrub::default();
    let mut buf = vec![0u8; CHUNK];
    for k in task.completed_pieces() {
        let (Some(expected), Some((off, len))) = (task.piece_crc(k), task.stored_range(k)) else { continue };
        match crc_of(task, off, len, &mut buf) {
            Ok(got) if got == expected => {
                task.set_verified(k);
                report.good += 1;
            }
            Ok(got) => {
                task.drop_corrupt_piece(k, expected, got);
                report.cleared += 1;
            }
            Err(e) => {
                tracing::warn!(task = %task.id(), piece = k, error = %e, "piece unreadable at load; it will be fetched again");
                task.drop_corrupt_piece(k, expected, 0);
                report.cleared += 1;
            }
        }
    }
    report
}

fn crc_of(task: &Task, off: u64, len: u32, buf: &mut [u8]) -> std::io::Result<u32> {
    let (mut crc, mut done) = (0u32, 0u64);
    while done < u64::from(len) {
        let n = (u64::from(len) - done).min(buf.len() as u64) as usize;
        task.data.read_exact_at(&mut buf[..n], off + done)?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        done += n as u64;
    }
    Ok(crc)
}
