//! One owner per data directory: a daemon, or one in-process engine (`shoal get`, the git-lfs agent) at a
//! time. Opening a store scans, repairs and removes leftovers, which would destroy the files of another
//! process writing there, so every opener holds an exclusive `flock` on `<data dir>/lock` for as long as
//! its store is open. The file names its holder, so a refused opener can say who has the directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Who holds a data directory.
#[derive(Clone, Debug)]
pub enum Holder {
    /// A daemon, with the proxy address clients should use instead.
    Daemon { proxy: String },
    /// An in-process engine (a command that runs without a daemon).
    Embedded,
}

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DirLockError {
    #[error("the data directory {dir} is in use by {holder}")]
    Busy { dir: PathBuf, holder: String, daemon: bool },
    #[error("locking the data directory {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
}

impl DirLockError {
    /// True when the holder is a daemon (waiting for it is pointless).
    pub fn held_by_daemon(&self) -> bool {
        matches!(self, DirLockError::Busy { daemon: true, .. })
    }
}

/// The held lock; dropping it (or the process ending) releases the directory.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock now or says who holds it.
    pub fn try_acquire(dir: &Path, holder: &Holder) -> Result<DirLock, DirLockError> {
        let io = |source| DirLockError::Io { dir: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir.join("lock"))
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns for the whole call; it only reads the fd number.
        // The lock lives with the open file description, which `DirLock` keeps until it is dropped.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(e));
            }
            let mut who = String::new();
            let _ = f.read_to_string(&mut who);
            let (holder, daemon) = describe(&who);
            return Err(DirLockError::Busy { dir: dir.to_owned(), holder, daemon });
        }
        let line = match holder {
            Holder::Daemon { proxy } => format!("daemon {proxy} pid {}\n", std::process::id()),
            Holder::Embedded => format!("embedded pid {}\n", std::process::id()),
        };
        f.set_len(0).map_err(io)?;
        f.rewind().map_err(io)?;
        f.write_all(line.as_bytes()).map_err(io)?;
        Ok(DirLock { _file: f })
    }
}

/// The holder line as words for an error message, and whether the holder is a daemon.
fn describe(line: &str) -> (String, bool) {
    let mut w = line.split_whitespace();
    match (w.next(), w.next()) {
        (Some("daemon"), Some(addr)) => (format!("a daemon (proxy {addr}; point clients there)"), true),
        (Some("embedded"), _) => ("another shoal command running without a daemon".to_owned(), false),
        _ => ("another shoal process".to_owned(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it() {
        let d = tempfile::tempdir().unwrap();
        let a = DirLock::try_acquire(d.path(), &Holder::Daemon { proxy: "127.0.0.1:1".into() }).unwrap();
        let e = DirLock::try_acquire(d.path(), &Holder::Embedded).unwrap_err();
        assert!(e.held_by_daemon(), "{e}");
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
        drop(a);
        let b = DirLock::try_acquire(d.path(), &Holder::Embedded).unwrap();
        let e = DirLock::try_acquire(d.path(), &Holder::Embedded).unwrap_err();
        assert!(!e.held_by_daemon(), "{e}");
        drop(b);
    }
}
