//! Task identifiers: 32 bytes, written as 64 lowercase hex digits everywhere (file names, wire, logs).

use std::fmt;
use std::str::FromStr;

/// A task's identity. Only this fixed-size value ever becomes a file name, so nothing path-like from a
/// request can reach the file system.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub [u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("task id must be 64 lowercase hex digits")]
pub struct BadTaskId;

impl TaskId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The two-digit shard directory the task's files live in.
    pub fn shard(&self) -> String {
        hex::encode(&self.0[..1])
    }
}

impl FromStr for TaskId {
    type Err = BadTaskId;

    fn from_str(s: &str) -> Result<Self, BadTaskId> {
        // Uppercase is refused so that one task has exactly one spelling on disk.
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(BadTaskId);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| BadTaskId)?;
        Ok(TaskId(out))
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", &self.to_hex()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_canonical_hex() {
        let s = "ab".repeat(32);
        assert_eq!(s.parse::<TaskId>().unwrap().to_hex(), s);
        assert_eq!("AB".repeat(32).parse::<TaskId>(), Err(BadTaskId));
        assert_eq!("ab".repeat(31).parse::<TaskId>(), Err(BadTaskId));
        assert_eq!(format!("../{}", "a".repeat(61)).parse::<TaskId>(), Err(BadTaskId));
    }
}
