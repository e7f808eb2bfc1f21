//! The floor of a verifying relay over the kernel's TCP, for `scripts/bench-link.sh` and
//! `scripts/bench-local.sh`: what any program that receives an object from an origin, checks its sha256
//! and forwards it to a local client must spend, with nothing else (no pieces, no crc32c, no disk, no
//! scheduler). `examples/cpu_floor.rs` counts the sha256 and one copy; this adds what the kernel charges
//! for the receive and the send (on loopback the client's receive runs in the sender's context too), so
//! the daemon's CPU beside it is its own overhead.
//!
//!   cargo run --release --example relay_floor LISTEN ORIGIN      (e.g. 127.0.0.1:65009 10.214.0.2:8080)
//!
//! Serves one plain HTTP/1.1 GET at a time (`curl http://LISTEN/<sha256>`): the request head goes to ORIGIN
//! as it came, the response head back. Each body read is written to the client and handed to a second
//! thread for sha256, so the hash runs beside the socket work as the daemon's does. The last read is
//! written only after the digest matched the path's last segment (when that is 64 hex digits);
//! otherwise the client's connection is reset and never ends cleanly. Runs until killed.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// One receive's worth; the kernel rarely returns more from one read.
const BUF: usize = 1 << 20;
/// Largest request or response head accepted.
const MAX_HEAD: usize = 64 << 10;
/// A body read that waits this long with a receive mark set gives the mark up.
const STALL_GUARD: Duration = Duration::from_millis(50);
/// STALL_GUARD waits in a row (60 s) before the origin counts as gone.
const IDLE_TURNS: u32 = 1200;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(origin)) = (args.next(), args.next()) else {
        eprintln!("usage: relay_floor LISTEN ORIGIN");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        if let Err(e) = relay(client, &origin) {
            eprintln!("relay_floor: {e}");
        }
    }
}

/// Reads from `s` until the end of an HTTP head; returns the head and whatever body bytes followed it.
fn read_head(s: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    // Bounded by MAX_HEAD bytes.
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a head"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
    }
}

fn content_length(head: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(head).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
    })
}

/// The sha256 the request's path names, if its last segment is 64 hex digits.
fn named_digest(request: &[u8]) -> Option<[u8; 32]> {
    let line = std::str::from_utf8(request).ok()?.lines().next()?;
    let path = line.split(' ').nth(1)?;
    let last = path.rsplit('/').next()?;
    let mut d = [0u8; 32];
    (last.len() == 64).then_some(())?;
    for (i, b) in d.iter_mut().enumerate() {
        *b = u8::from_str_radix(last.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(d)
}

fn relay(mut client: TcpStream, origin: &str) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    client.set_write_timeout(Some(Duration::from_secs(60)))?;
    let (request, _) = read_head(&mut client)?;
    let want = named_digest(&request);
    let mut up = TcpStream::connect(origin)?;
    up.set_read_timeout(Some(Duration::from_secs(60)))?;
    up.write_all(&request)?;
    let (head, first) = read_head(&mut up)?;
    client.write_all(&head)?;
    let len = content_length(&head).ok_or_else(|| io::Error::other("origin sent no Content-Length"))?;
    let got = body(&mut up, &mut client, first, len)?;
    if want.is_some_and(|w| w != got.0) {
        // A wrong body must not look whole: reset instead of a clean close.
        let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        return Err(io::Error::other("body does not match the sha256 its path names"));
    }
    client.write_all(&got.1)?;
    let _ = client.shutdown(Shutdown::Write);
    Ok(())
}

/// Forwards `len` body bytes (the first of them already in `first`), hashing on a second thread. Returns
/// the digest and the last read, not yet written: the caller writes it only if the digest is right.
fn body(up: &mut TcpStream, client: &mut TcpStream, first: Vec<u8>, len: u64) -> io::Result<([u8; 32], Vec<u8>)> {
    let (to_hash, hash_rx) = mpsc::sync_channel::<Vec<u8>>(8);
    let (back, spare) = mpsc::channel::<Vec<u8>>();
    let hasher = std::thread::spawn(move || {
        let mut h = Sha256::new();
        for b in hash_rx {
            h.update(&b);
            let _ = back.send(b);
        }
        <[u8; 32]>::from(h.finalize())
    });
    let mut left = len.checked_sub(first.len() as u64).ok_or_else(|| io::Error::other("body longer than announced"))?;
    let mut pending = first;
    // Woken for a batch of bytes rather than every segment, exactly as the daemon's origin reads are
    // (src/gather.rs): a relay woken per 64 KiB spends more CPU than the daemon and would be no floor.
    let mut gather = shoal::gather::Gather::new();
    gather.begin();
    // A mark set on a fresh connection stalled this relay for a minute on some runs: the read woke only
    // at its 60 s timeout, with part of the mark queued. A read that waits STALL_GUARD with a mark set
    // (returning what is queued, or nothing) drops the mark for the rest of the body, and the relay says
    // so on stderr: a relay that stalled is no floor.
    up.set_read_timeout(Some(STALL_GUARD))?;
    let (mut marked, mut idle) = (true, 0u32);
    // Bounded by len bytes: every turn consumes at least one, or waits STALL_GUARD (at most IDLE_TURNS
    // times in a row), or fails.
    while left > 0 {
        let mut b = spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(BUF));
        b.resize(BUF.min(left as usize), 0);
        if marked {
            gather.before_read(Some(up.as_fd()), left);
        }
        let t0 = Instant::now();
        let r = up.read(&mut b);
        let waited = t0.elapsed();
        if marked && waited >= STALL_GUARD {
            marked = false;
            gather.end(Some(up.as_fd()));
            eprintln!("relay_floor: a read waited {waited:?} on the receive mark ({left} bytes due); mark dropped");
        }
        let n = match r {
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                idle += 1;
                if idle > IDLE_TURNS {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "origin sent nothing for 60 s"));
                }
                continue;
            }
            r => r?,
        };
        idle = 0;
        gather.read(n);
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "origin ended the body early"));
        }
        b.truncate(n);
        left -= n as u64;
        client.write_all(&pending)?;
        let done = std::mem::replace(&mut pending, b);
        if !done.is_empty() {
            to_hash.send(done).map_err(|_| io::Error::other("hasher gone"))?;
        }
    }
    to_hash.send(pending.clone()).map_err(|_| io::Error::other("hasher gone"))?;
    drop(to_hash);
    let digest = hasher.join().map_err(|_| io::Error::other("hasher panicked"))?;
    Ok((digest, pending))
}
