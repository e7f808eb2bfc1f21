//! A disk that loses power: ext4 on a loop device whose backing file is served by an in-process FUSE file
//! system with a volatile write cache.
//!
//! Every write the loop device sends lands in the cache; an fsync of the backing file (which is what the
//! loop driver does for a FLUSH, and for a FUA write, since loop announces a write-back cache without FUA)
//! moves the cache to the durable image. [`VolatileDisk::cut`] is the power cut: each 4 KiB block written
//! since the last flush reaches the durable image or not, at random and independently (a disk may persist
//! its cache in any order), and nothing written afterwards ever does. [`VolatileDisk::recover`] then mounts
//! the durable image alone, as the machine would after the power came back: ext4 replays its journal and
//! the test inspects what is left.
//!
//! No device-mapper or nbd is needed (this kernel has neither); FUSE and loop devices are enough.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request,
    WriteFlags,
};
use rand::{Rng, SeedableRng};

const BLOCK: u64 = 4096;
const IMAGE: &str = "disk.img";
const IMAGE_INO: u64 = 2;
const TTL: Duration = Duration::from_secs(3600);

/// What the power cut did to the write cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cut {
    /// Blocks written since the last flush that reached the durable image anyway.
    pub kept: usize,
    /// Blocks written since the last flush that were lost.
    pub lost: usize,
    /// Flushes the disk honoured before the cut.
    pub flushes: u64,
}

struct Cache {
    /// Block number → its bytes, for blocks written since the last flush.
    dirty: BTreeMap<u64, Box<[u8]>>,
    /// After the cut nothing reaches the durable image any more.
    cut: bool,
    flushes: u64,
}

struct Disk {
    durable: File,
    size: u64,
    cache: Mutex<Cache>,
}

impl Disk {
    fn block(&self, c: &Cache, b: u64) -> Box<[u8]> {
        if let Some(d) = c.dirty.get(&b) {
            return d.clone();
        }
        let mut buf = vec![0u8; BLOCK as usize].into_boxed_slice();
        let _ = self.durable.read_exact_at(&mut buf, b * BLOCK);
        buf
    }

    fn read(&self, off: u64, len: u64) -> Vec<u8> {
        let end = (off + len).min(self.size);
        let c = self.cache.lock().unwrap();
        let mut out = Vec::with_capacity(end.saturating_sub(off) as usize);
        let mut pos = off;
        while pos < end {
            let b = pos / BLOCK;
            let in_block = (pos % BLOCK) as usize;
            let n = ((BLOCK - pos % BLOCK).min(end - pos)) as usize;
            out.extend_from_slice(&self.block(&c, b)[in_block..in_block + n]);
            pos += n as u64;
        }
        out
    }

    /// Writes (or zeroes, when `data` is None) `len` bytes at `off` into the cache.
    fn write(&self, off: u64, len: u64, data: Option<&[u8]>) -> u64 {
        let end = (off + len).min(self.size);
        let mut c = self.cache.lock().unwrap();
        let mut pos = off;
        while pos < end {
            let b = pos / BLOCK;
            let in_block = (pos % BLOCK) as usize;
            let n = ((BLOCK - pos % BLOCK).min(end - pos)) as usize;
            let mut blk = self.block(&c, b);
            match data {
                Some(d) => blk[in_block..in_block + n].copy_from_slice(&d[(pos - off) as usize..][..n]),
                None => blk[in_block..in_block + n].fill(0),
            }
            c.dirty.insert(b, blk);
            pos += n as u64;
        }
        end.saturating_sub(off)
    }

    /// A flush: everything written so far becomes durable (unless the power is already gone).
    fn flush(&self) {
        let mut c = self.cache.lock().unwrap();
        if c.cut {
            return;
        }
        for (b, blk) in std::mem::take(&mut c.dirty) {
            self.durable.write_all_at(&blk, b * BLOCK).expect("durable image write");
        }
        c.flushes += 1;
    }

    fn cut(&self, seed: u64) -> Cut {
        let mut c = self.cache.lock().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut r = Cut { flushes: c.flushes, ..Cut::default() };
        for (b, blk) in std::mem::take(&mut c.dirty) {
            if rng.gen_bool(0.5) {
                self.durable.write_all_at(&blk, b * BLOCK).expect("durable image write");
                r.kept += 1;
            } else {
                r.lost += 1;
            }
        }
        c.cut = true;
        r
    }
}

/// The FUSE side: one directory holding one file, the loop device's backing image.
struct Fs(Arc<Disk>);

impl Fs {
    fn attr(&self, ino: u64) -> FileAttr {
        let file = ino == IMAGE_INO;
        FileAttr {
            ino: INodeNo(ino),
            size: if file { self.0.size } else { 0 },
            blocks: if file { self.0.size / 512 } else { 0 },
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: if file { FileType::RegularFile } else { FileType::Directory },
            perm: if file { 0o600 } else { 0o700 },
            nlink: if file { 1 } else { 2 },
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: BLOCK as u32,
        }
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if u64::from(parent) == 1 && name == IMAGE {
            reply.entry(&TTL, &self.attr(IMAGE_INO), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match u64::from(ino) {
            1 | IMAGE_INO => reply.attr(&TTL, &self.attr(u64::from(ino))),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        reply.data(&self.0.read(offset, size as u64));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if offset + data.len() as u64 > self.0.size {
            return reply.error(Errno::ENOSPC);
        }
        reply.written(self.0.write(offset, data.len() as u64, Some(data)) as u32);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close(2), not a durability barrier.
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.0.flush();
        reply.ok();
    }

    /// The loop device turns discard and write-zeroes into fallocate on its backing file; both read back
    /// as zeroes afterwards, and are as volatile as a write.
    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            self.0.write(offset, length, None);
        }
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if u64::from(ino) != 1 {
            return reply.error(Errno::ENOENT);
        }
        let entries =
            [(1, FileType::Directory, "."), (1, FileType::Directory, ".."), (2, FileType::RegularFile, IMAGE)];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// ext4 on a loop device over a volatile FUSE image, mounted at [`VolatileDisk::mount_point`].
pub struct VolatileDisk {
    disk: Arc<Disk>,
    dir: PathBuf,
    session: Option<BackgroundSession>,
    loop_dev: Option<String>,
    mounted: bool,
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

impl VolatileDisk {
    /// Makes an ext4 file system of `size` bytes in `dir` and mounts it through the volatile cache.
    pub fn create(dir: &Path, size: u64) -> VolatileDisk {
        let image = dir.join("durable.img");
        let durable = File::options().read(true).write(true).create_new(true).open(&image).unwrap();
        durable.set_len(size).unwrap();
        // Made on the durable image directly: the file system starts out on stable storage.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&image));
        let disk = Arc::new(Disk {
            durable,
            size,
            cache: Mutex::new(Cache { dirty: BTreeMap::new(), cut: false, flushes: 0 }),
        });
        let fuse_dir = dir.join("fuse");
        std::fs::create_dir_all(&fuse_dir).unwrap();
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        let session = fuser::spawn_mount(Fs(disk.clone()), &fuse_dir, &Config::default()).expect("FUSE mount");
        let mut d = VolatileDisk { disk, dir: dir.to_owned(), session: Some(session), loop_dev: None, mounted: false };
        d.attach_and_mount(&fuse_dir.join(IMAGE));
        d
    }

    fn attach_and_mount(&mut self, image: &Path) {
        let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(image));
        self.loop_dev = Some(dev.clone());
        // A journal commit every second rather than every five: a short download then spans commits, so
        // later updates of a task's piece table are in-place overwrites that may reach the disk before the
        // data they vouch for (the state worth testing).
        run(Command::new("mount").args(["-t", "ext4", "-o", "commit=1", &dev]).arg(self.mount_point()));
        self.mounted = true;
    }

    pub fn mount_point(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    /// The power cut. Stop every writer to the mount (kill -9) before calling [`VolatileDisk::recover`].
    pub fn cut(&self, seed: u64) -> Cut {
        self.disk.cut(seed)
    }

    /// After [`VolatileDisk::cut`]: tears the old mount down (its late writes go nowhere) and mounts the
    /// durable image as the next boot would; ext4 replays its journal.
    pub fn recover(&mut self) {
        self.unmount();
        self.session.take();
        let image = self.dir.join("durable.img");
        self.attach_and_mount(&image);
    }

    fn unmount(&mut self) {
        if self.mounted {
            let mut tries = 0;
            // A killed process's last descriptors may take a moment to go; lazy as the last resort.
            while !Command::new("umount").arg(self.mount_point()).status().is_ok_and(|s| s.success()) {
                tries += 1;
                if tries > 50 {
                    let _ = Command::new("umount").arg("-l").arg(self.mount_point()).status();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            self.mounted = false;
        }
        if let Some(dev) = self.loop_dev.take() {
            let _ = Command::new("losetup").args(["-d", &dev]).status();
        }
    }
}

impl Drop for VolatileDisk {
    fn drop(&mut self) {
        self.unmount();
        self.session.take();
    }
}

/// A seed that differs between runs unless SHOAL_POWER_SEED fixes it (printed so a failure can be replayed).
pub fn seed() -> u64 {
    std::env::var("SHOAL_POWER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1))
}
