//! Swarm simulator: the real scheduler state machine (`shoal::scheduler::State`) driven by simulated peers
//! in virtual time, so that a tree over 10,000 peers can be studied on a 2-core machine.
//!
//! Each peer behaves as the engine does (src/engine/conductor.rs, pieces.rs): it asks the scheduler for
//! the task; `BackToSource` fetches pieces in order over the shared origin link; `Parents` downloads from
//! every parent at once, up to `pieces_per_parent` requests per parent, lowest missing piece first, each
//! piece from one parent only; `Wait` asks again later; a round without progress for `stall` asks again.
//! Progress goes to the scheduler with every piece, as the engine's reporter sends it. Links are fluid:
//! a parent's uplink is split evenly between its uploads, a child's downlink between its downloads, and a
//! flow runs at the smaller share. CPU, latency and TCP are not modelled.
//!
//! Reports, per scenario: the last peer's completion beside the ideal (size / origin rate + tree depth ×
//! piece time at the peer rate), origin bytes / size, the widest fan-out, the depth of the tree, scheduler
//! call latency (p50 / p99 / max, wall clock of every `State` call) and the process's RSS.
//!
//!   cargo bench --bench swarm_sim                       # 16 peers (as scripts/bench-swarm.sh), 10,000 peers,
//!                                                       # 10,000 hosts over 1,000 tasks
//!   cargo bench --bench swarm_sim -- --peers 32 --size-mib 256 --origin-mbit 100 --peer-mbit 1000

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use shoal::scheduler::{Action, Decision, HostInfo, State, StateConfig, TaskProgress, TaskRequest};
use shoal::storage::TaskId;

#[derive(Clone, Copy)]
struct Params {
    peers: usize,
    tasks: usize,
    size: u64,
    piece: u64,
    origin_bps: f64,
    peer_bps: f64,
    /// Peers join spread evenly over this many seconds.
    join_spread: f64,
    dt: f64,
    stall: f64,
    per_parent: usize,
    fan_out: u32,
    tree_parents: usize,
}

enum Role {
    Idle,
    Waiting { until: f64 },
    Source,
    Child { parents: Vec<usize> },
    Done,
}

struct Flow {
    piece: u32,
    /// Index of the uploading peer; None for the origin.
    from: Option<usize>,
    left: f64,
}

struct Peer {
    id: String,
    task: usize,
    join: f64,
    have: Vec<bool>,
    count: u32,
    claimed: Vec<bool>,
    role: Role,
    flows: Vec<Flow>,
    last_progress: f64,
    done_at: Option<f64>,
    depth: u32,
    started: bool,
}

struct Sim {
    p: Params,
    state: State,
    peers: Vec<Peer>,
    index: HashMap<String, usize>,
    task_ids: Vec<TaskId>,
    lat: Histogram<u64>,
    origin_bytes: f64,
    widest: u32,
    now: f64,
    steps: u64,
}

fn pieces(p: &Params) -> u32 {
    p.size.div_ceil(p.piece) as u32
}

impl Sim {
    fn new(p: Params) -> Sim {
        let state = State::new(StateConfig {
            max_hosts: p.peers + 16,
            fan_out: p.fan_out,
            tree_parents: p.tree_parents,
            ..StateConfig::default()
        });
        let n = pieces(&p) as usize;
        let task_ids = (0..p.tasks).map(|t| TaskId(*blake_like(t as u64))).collect();
        let mut sim = Sim {
            p,
            state,
            peers: Vec::with_capacity(p.peers + 1),
            index: HashMap::new(),
            task_ids,
            lat: Histogram::new(3).unwrap(),
            origin_bytes: 0.0,
            widest: 0,
            now: 0.0,
            steps: 0,
        };
        // One seed (index 0), registered first; then the peers, each on one task, joining over the spread.
        for i in 0..=p.peers {
            let id = if i == 0 { "seed".to_string() } else { format!("peer{i}") };
            let info = HostInfo {
                host_id: id.clone(),
                hostname: id.clone(),
                ip: IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
                upload_port: 65002,
                upload_capacity_bytes_per_sec: (p.peer_bps / 8.0) as u64,
                // One seed peer for a single task, as bench-swarm.sh runs; with many tasks, no seed: each
                // task's first requester fetches it (a seed simulated here serves one task at a time).
                is_seed: i == 0 && p.tasks == 1,
            };
            sim.state.register(i as u64, info);
            let join = if i == 0 { f64::MAX } else { p.join_spread * (i - 1) as f64 / p.peers.max(1) as f64 };
            sim.index.insert(id.clone(), i);
            sim.peers.push(Peer {
                id,
                task: if i == 0 { 0 } else { (i - 1) % p.tasks },
                join,
                have: vec![false; n],
                count: 0,
                claimed: vec![false; n],
                role: Role::Idle,
                flows: Vec::new(),
                last_progress: 0.0,
                done_at: None,
                depth: 0,
                started: false,
            });
        }
        sim
    }

    fn timed<T>(&mut self, f: impl FnOnce(&mut State) -> T) -> T {
        let t = Instant::now();
        let r = f(&mut self.state);
        let _ = self.lat.record(t.elapsed().as_nanos() as u64);
        r
    }

    fn report(&mut self, i: usize, b2s: bool) {
        let p = self.p;
        let task_id = self.task_ids[self.peers[i].task];
        let pr = TaskProgress {
            task_id,
            pieces_complete: self.peers[i].count,
            piece_count: Some(pieces(&p)),
            content_length: Some(p.size),
            piece_length: p.piece as u32,
            back_to_source: b2s,
            credentialed: false,
        };
        let id = self.peers[i].id.clone();
        let now = self.instant();
        let _ = self.timed(|s| s.progress(&id, &pr, now));
    }

    fn instant(&self) -> Instant {
        BASE.with(|b| *b) + Duration::from_secs_f64(self.now)
    }

    fn ask(&mut self, i: usize) {
        let task_id = self.task_ids[self.peers[i].task];
        let req = TaskRequest {
            task_id,
            url: format!("http://origin.sim/{}", self.peers[i].task),
            headers: Vec::new(),
            content_length: Some(self.p.size),
            piece_length: Some(self.p.piece as u32),
            private: false,
            credentialed: false,
        };
        let (id, now) = (self.peers[i].id.clone(), self.instant());
        let Ok((decision, action)) = self.timed(|s| s.request_task(&id, &req, now)) else {
            self.become_source(i);
            return;
        };
        if let Some(Action::TriggerSeed { seed_host, .. }) = action {
            let s = self.index[&seed_host];
            // The seed serves one task in these runs; it starts at once, as a seed peer's trigger does.
            if matches!(self.peers[s].role, Role::Idle) {
                self.peers[s].task = self.peers[i].task;
                self.become_source(s);
            }
        }
        match decision {
            Decision::BackToSource => self.become_source(i),
            Decision::Wait { retry_after } => {
                self.peers[i].role = Role::Waiting { until: self.now + retry_after.as_secs_f64() }
            }
            Decision::Parents(ps) => {
                let parents: Vec<usize> = ps.iter().filter_map(|p| self.index.get(&p.host_id).copied()).collect();
                let depth = parents.iter().map(|&p| self.peers[p].depth).min().unwrap_or(0) + 1;
                let me = &mut self.peers[i];
                me.depth = depth;
                me.role = Role::Child { parents };
                me.last_progress = self.now;
                if !me.started {
                    me.started = true;
                    self.report(i, false);
                }
            }
        }
    }

    fn become_source(&mut self, i: usize) {
        let me = &mut self.peers[i];
        me.role = Role::Source;
        me.depth = 0;
        me.started = true;
        me.last_progress = self.now;
        self.report(i, true);
    }

    /// Starts the requests a peer may make this step.
    fn plan(&mut self, i: usize) {
        let per_parent = self.p.per_parent;
        let n = pieces(&self.p);
        match &self.peers[i].role {
            Role::Source if self.peers[i].flows.is_empty() => {
                if let Some(k) = (0..n).find(|&k| !self.peers[i].have[k as usize]) {
                    let left = self.piece_len(k);
                    self.peers[i].flows.push(Flow { piece: k, from: None, left });
                }
            }
            Role::Child { parents } => {
                for &par in &parents.clone() {
                    let busy = self.peers[i].flows.iter().filter(|f| f.from == Some(par)).count();
                    for _ in busy..per_parent {
                        let (me, them) = (&self.peers[i], &self.peers[par]);
                        let Some(k) = (0..n as usize).find(|&k| them.have[k] && !me.have[k] && !me.claimed[k]) else {
                            break;
                        };
                        let left = self.piece_len(k as u32);
                        let me = &mut self.peers[i];
                        me.claimed[k] = true;
                        me.flows.push(Flow { piece: k as u32, from: Some(par), left });
                    }
                }
            }
            _ => {}
        }
    }

    fn piece_len(&self, k: u32) -> f64 {
        (self.p.size - u64::from(k) * self.p.piece).min(self.p.piece) as f64
    }

    /// Advances every flow by one step of fluid sharing.
    fn transfer(&mut self) {
        let mut up = vec![0u32; self.peers.len()];
        let mut down = vec![0u32; self.peers.len()];
        let mut origin_flows = 0u32;
        for (i, p) in self.peers.iter().enumerate() {
            for f in &p.flows {
                down[i] += 1;
                match f.from {
                    Some(u) => up[u] += 1,
                    None => origin_flows += 1,
                }
            }
        }
        let (dt, peer_bps) = (self.p.dt, self.p.peer_bps / 8.0);
        let origin_share = self.p.origin_bps / 8.0 / f64::from(origin_flows.max(1));
        let mut done: Vec<(usize, u32, bool)> = Vec::new();
        for (i, p) in self.peers.iter_mut().enumerate() {
            let down_share = peer_bps / f64::from(down[i].max(1));
            p.flows.retain_mut(|f| {
                let rate = match f.from {
                    Some(u) => down_share.min(peer_bps / f64::from(up[u].max(1))),
                    None => down_share.min(origin_share),
                };
                let moved = (rate * dt).min(f.left);
                f.left -= moved;
                if f.from.is_none() {
                    self.origin_bytes += moved;
                }
                if f.left <= 0.0 {
                    done.push((i, f.piece, f.from.is_none()));
                    return false;
                }
                true
            });
        }
        for (i, k, b2s) in done {
            let p = &mut self.peers[i];
            if !p.have[k as usize] {
                p.have[k as usize] = true;
                p.count += 1;
            }
            p.last_progress = self.now;
            self.report(i, b2s);
            if self.peers[i].count == pieces(&self.p) {
                self.finish(i);
            }
        }
    }

    fn finish(&mut self, i: usize) {
        let (id, task_id, now, p) =
            (self.peers[i].id.clone(), self.task_ids[self.peers[i].task], self.instant(), self.p);
        let _ = self.timed(|s| s.finished(&id, task_id, p.size, p.piece as u32, Some([1; 32]), now));
        let me = &mut self.peers[i];
        me.role = Role::Done;
        me.flows.clear();
        me.done_at = Some(self.now);
    }

    /// One virtual step: joins and retries ask, stalled rounds ask again, requests start, bytes move.
    fn step(&mut self) {
        for i in 0..self.peers.len() {
            let ask = match self.peers[i].role {
                Role::Idle => self.peers[i].join <= self.now,
                Role::Waiting { until } => until <= self.now,
                Role::Child { .. } => {
                    self.peers[i].flows.is_empty() && self.now - self.peers[i].last_progress > self.p.stall
                }
                _ => false,
            };
            if ask {
                if let Role::Child { .. } = self.peers[i].role {
                    self.peers[i].claimed = self.peers[i].have.clone();
                }
                self.ask(i);
            }
            self.plan(i);
        }
        self.transfer();
        self.steps += 1;
        if self.steps % 50 == 0 {
            for t in 0..self.task_ids.len().min(4) {
                if let Some(s) = self.state.task_summary(&self.task_ids[t]) {
                    self.widest = self.widest.max(s.widest_fan_out);
                }
            }
        }
        self.now += self.p.dt;
    }

    fn run(&mut self, limit: f64) {
        // Bounded by the virtual-time limit.
        while self.now < limit && self.peers.iter().skip(1).any(|p| p.done_at.is_none()) {
            self.step();
        }
    }
}

thread_local! {
    static BASE: Instant = Instant::now();
}

/// A task ID from a number (any 32 distinct bytes do).
fn blake_like(n: u64) -> Box<[u8; 32]> {
    let mut b = [0u8; 32];
    for (i, chunk) in b.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(
            &(n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(i as u32 * 13) ^ i as u64).to_le_bytes(),
        );
    }
    Box::new(b)
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn scenario(name: &str, p: Params, limit: f64) {
    let wall = Instant::now();
    let mut sim = Sim::new(p);
    sim.run(limit);
    let done: Vec<f64> = sim.peers.iter().skip(1).filter_map(|x| x.done_at).collect();
    let last = done.iter().copied().fold(0.0, f64::max);
    let depth = sim.peers.iter().skip(1).map(|x| x.depth).max().unwrap_or(0);
    let piece_time = p.piece as f64 * 8.0 / p.peer_bps;
    // The origin link is shared by the tasks' fetchers: each gets origin_bps / tasks.
    let ideal = p.size as f64 * 8.0 / (p.origin_bps / p.tasks as f64) + f64::from(depth) * piece_time;
    println!(
        "| {name} | {}/{} | {last:.2} s | {ideal:.2} s | {:.3}× | {:.3} | {} | {depth} | {:.1} / {:.1} / {:.0} µs | {} | {:.0} MiB | {:.1} s |",
        done.len(),
        p.peers,
        last / ideal,
        sim.origin_bytes / (p.size as f64 * p.tasks as f64),
        sim.widest,
        sim.lat.value_at_quantile(0.5) as f64 / 1e3,
        sim.lat.value_at_quantile(0.99) as f64 / 1e3,
        sim.lat.max() as f64 / 1e3,
        sim.lat.len(),
        rss_mib(),
        wall.elapsed().as_secs_f64(),
    );
}

fn arg(args: &[String], name: &str) -> Option<f64> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = Params {
        peers: 16,
        tasks: 1,
        size: 256 << 20,
        piece: 4 << 20,
        origin_bps: 100e6,
        peer_bps: 1e9,
        join_spread: 0.0,
        dt: 0.005,
        stall: 10.0,
        per_parent: 4,
        fan_out: StateConfig::default().fan_out,
        tree_parents: StateConfig::default().tree_parents,
    };
    println!("| scenario | peers done | last peer | ideal | last / ideal | origin bytes / size | widest fan-out | tree depth | scheduler call p50 / p99 / max | calls | RSS | wall |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    if let Some(n) = arg(&args, "--peers") {
        let p = Params {
            peers: n as usize,
            size: arg(&args, "--size-mib").map_or(base.size, |m| (m as u64) << 20),
            origin_bps: arg(&args, "--origin-mbit").map_or(base.origin_bps, |m| m * 1e6),
            peer_bps: arg(&args, "--peer-mbit").map_or(base.peer_bps, |m| m * 1e6),
            fan_out: arg(&args, "--fan-out").map_or(base.fan_out, |v| v as u32),
            tree_parents: arg(&args, "--tree-parents").map_or(base.tree_parents, |v| v as usize),
            ..base
        };
        scenario(&format!("{n} peers"), p, 3600.0);
        return;
    }
    scenario("16 peers, 256 MiB, 100 Mbit origin, 1 Gbit peers (as bench-swarm.sh)", base, 600.0);
    scenario("32 peers, same", Params { peers: 32, ..base }, 600.0);
    scenario("10,000 peers, one task, same", Params { peers: 10_000, dt: 0.01, ..base }, 900.0);
    scenario(
        "10,000 hosts over 1,000 tasks (10 each), 64 MiB, 100 Mbit per task at the origin",
        Params { peers: 10_000, tasks: 1_000, size: 64 << 20, origin_bps: 100e9, dt: 0.01, ..base },
        900.0,
    );
}
