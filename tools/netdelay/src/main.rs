//! `netdelay QUEUE DELAY_MS`: holds each packet the kernel hands to NFQUEUE queue QUEUE for DELAY_MS
//! milliseconds, then accepts it. This kernel has no sch_netem, so scripts/faults-net.sh builds netem's
//! `delay` from an iptables `-j NFQUEUE --queue-bypass` rule and this process, run inside the namespace
//! whose traffic it delays. The delay is constant, so packets leave in arrival order (a FIFO).
//!
//! Packets beyond the queue's capacity are accepted at once by the kernel (fail-open), and the rule's
//! `--queue-bypass` lets traffic through unchanged when this process is not running: a crashed delayer
//! never turns into a partition the script did not ask for.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use nfq::{Message, Queue, Verdict};

/// Packets the kernel may hold for us at once (≈ 200 ms of a few hundred Mbit/s of MTU-sized packets).
const QUEUE_LEN: u32 = 65_536;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(num), Some(ms)) =
        (args.get(1).and_then(|s| s.parse::<u16>().ok()), args.get(2).and_then(|s| s.parse::<u64>().ok()))
    else {
        eprintln!("usage: netdelay QUEUE_NUM DELAY_MS");
        std::process::exit(2);
    };
    if let Err(e) = run(num, Duration::from_millis(ms)) {
        eprintln!("netdelay: {e}");
        std::process::exit(1);
    }
}

fn run(num: u16, delay: Duration) -> std::io::Result<()> {
    let mut q = Queue::open()?;
    q.bind(num)?;
    q.set_queue_max_len(num, QUEUE_LEN)?;
    q.set_fail_open(num, true)?;
    q.set_nonblocking(true);
    let mut held: VecDeque<(Instant, Message)> = VecDeque::new();
    loop {
        // Take everything queued now, stamping each packet with its release time.
        loop {
            match q.recv() {
                Ok(m) => held.push_back((Instant::now() + delay, m)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // ENOBUFS: the kernel dropped packets for us (they were lost, as on a full link); go on.
                Err(e) if e.raw_os_error() == Some(105) => break,
                Err(e) => return Err(e),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(at, _)| *at <= now) {
            let (_, mut m) = held.pop_front().expect("front checked above");
            m.set_verdict(Verdict::Accept);
            q.verdict(m)?;
        }
        // Sleep until the next release, at most 1 ms, so newly queued packets are stamped promptly.
        let next = held.front().map_or(Duration::from_millis(1), |(at, _)| at.saturating_duration_since(now));
        std::thread::sleep(next.min(Duration::from_millis(1)));
    }
}
