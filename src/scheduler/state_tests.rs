use std::collections::HashMap;
use std::net::IpAddr;

use super::*;

const T: TaskId = TaskId([7; 32]);

fn cfg() -> StateConfig {
    StateConfig {
        max_parents: 4,
        fan_out: 4,
        tree_parents: 4,
        retry_after: Duration::from_millis(100),
        max_wait: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(10),
        max_tasks_per_host: 3,
        max_hosts: 4,
        max_tasks: 5,
    }
}

fn host(id: &str, cap: u64, seed: bool) -> HostInfo {
    HostInfo {
        host_id: id.into(),
        hostname: id.into(),
        ip: IpAddr::from([127, 0, 0, 1]),
        upload_port: 4000,
        upload_capacity_bytes_per_sec: cap,
        is_seed: seed,
    }
}

fn req(task: TaskId, url: &str) -> TaskRequest {
    TaskRequest {
        task_id: task,
        url: url.into(),
        headers: vec![("X-Client".into(), format!("for {url}"))],
        content_length: Some(1 << 30),
        piece_length: Some(4 << 20),
        private: false,
        credentialed: false,
    }
}

fn prog(task: TaskId, n: u32) -> TaskProgress {
    TaskProgress {
        task_id: task,
        pieces_complete: n,
        piece_count: Some(256),
        content_length: Some(1 << 30),
        piece_length: 4 << 20,
        back_to_source: false,
        credentialed: false,
    }
}

/// A state with hosts h0..hn registered on connections 0..n.
fn with_hosts(n: usize) -> State {
    let mut s = State::new(cfg());
    for i in 0..n {
        s.register(i as ConnId, host(&format!("h{i}"), 1000, false));
    }
    s
}

fn ask(s: &mut State, h: &str, now: Instant) -> Decision {
    s.request_task(h, &req(T, "http://o/x"), now).unwrap().0
}

fn ids(d: &Decision) -> Vec<String> {
    match d {
        Decision::Parents(ps) => ps.iter().map(|p| p.host_id.clone()).collect(),
        other => panic!("expected parents, got {other:?}"),
    }
}

#[test]
fn parents_ranked_by_free_capacity_then_pieces_then_connections() {
    let now = Instant::now();
    let mut s = State::new(cfg());
    for (id, cap) in [("a", 1000), ("b", 1000), ("c", 1000), ("d", 5000), ("e", 1000), ("f", 1000), ("g", 1000)] {
        s.register(0, host(id, cap, false));
    }
    assert_eq!(ask(&mut s, "a", now), Decision::BackToSource);
    s.progress("a", &prog(T, 10), now).unwrap();
    s.progress("b", &prog(T, 20), now).unwrap();
    s.progress("c", &prog(T, 5), now).unwrap();
    s.progress("d", &prog(T, 1), now).unwrap();
    s.progress("e", &prog(T, 0), now).unwrap(); // no piece yet: never a parent
    s.finished("f", T, 1 << 30, 4 << 20, None, now).unwrap();
    // d has the most capacity but uses most of it; b has more pieces than a, a more than c; f, finished,
    // has the least capacity left.
    s.report_load("d", PeerLoad { upload_bytes_per_sec: 4500, upload_connections: 1 }).unwrap();
    s.report_load("b", PeerLoad { upload_bytes_per_sec: 0, upload_connections: 3 }).unwrap();
    s.report_load("f", PeerLoad { upload_bytes_per_sec: 100, upload_connections: 0 }).unwrap();
    let d = ask(&mut s, "g", now);
    assert_eq!(ids(&d), ["b", "a", "c", "f"], "free desc, then more pieces; at most 4");
    let Decision::Parents(ps) = d else { unreachable!() };
    assert_eq!(ps[3].pieces_complete, 256, "a finished parent has every piece");
    assert!(ps[3].finished);
    // The requester is never its own parent.
    assert!(!ids(&ask(&mut s, "c", now)).contains(&"c".to_string()));
}

/// 1 fetcher and 12 children asking at once, each parent feeding at most 2: the fetcher feeds 2, they
/// feed the next ones once they have started, and so on: a tree, not 12 copies from the fetcher.
#[test]
fn fan_out_bounds_each_parent_and_children_feed_each_other() {
    let now = Instant::now();
    let mut s = State::new(StateConfig { fan_out: 2, max_hosts: 16, ..cfg() });
    for i in 0..13 {
        s.register(i, host(&format!("h{i}"), 1000, false));
    }
    assert_eq!(ask(&mut s, "h0", now), Decision::BackToSource);
    let mut started = vec!["h0".to_string()];
    let mut b2s = prog(T, 1);
    b2s.back_to_source = true;
    s.progress("h0", &b2s, now).unwrap();
    let mut parents_of = HashMap::new();
    // Rounds of asking: whoever gets parents starts (reports progress) before the next round.
    for _round in 0..12 {
        let mut newly = Vec::new();
        for i in 1..13 {
            let h = format!("h{i}");
            if parents_of.contains_key(&h) {
                continue;
            }
            if let Decision::Parents(ps) = ask(&mut s, &h, now) {
                let ps: Vec<String> = ps.into_iter().map(|p| p.host_id).collect();
                assert!(ps.iter().all(|p| started.contains(p)), "{h} got a parent that has not started: {ps:?}");
                parents_of.insert(h.clone(), ps);
                newly.push(h);
            }
        }
        for h in newly {
            s.progress(&h, &prog(T, 0), now).unwrap();
            started.push(h);
        }
        let fed = |p: &str| parents_of.values().filter(|ps| ps.iter().any(|x| x == p)).count();
        assert!(started.iter().all(|p| fed(p) <= 2), "a parent feeds more than 2: {parents_of:?}");
        assert!(s.task_summary(&T).unwrap().widest_fan_out <= 2);
    }
    assert_eq!(parents_of.len(), 12, "every child found parents: {parents_of:?}");
    let from_h0 = parents_of.values().filter(|ps| ps.contains(&"h0".to_string())).count();
    assert_eq!(from_h0, 2, "the fetcher feeds two children, not twelve");
    // A child that finishes frees its parents' places.
    let (first, its) = parents_of.iter().find(|(_, ps)| ps.contains(&"h0".to_string())).unwrap();
    let (first, its) = (first.clone(), its.clone());
    s.finished(&first, T, 1 << 30, 4 << 20, None, now).unwrap();
    s.register(13, host("h13", 1000, false));
    let late = ids(&ask(&mut s, "h13", now));
    assert!(its.iter().all(|p| late.contains(p) || s.tasks[&T].fanout.children(p) >= 2), "{late:?}");
}

#[test]
fn bad_parent_is_never_offered_to_that_child_again() {
    let now = Instant::now();
    let mut s = with_hosts(4);
    assert_eq!(ask(&mut s, "h0", now), Decision::BackToSource);
    s.progress("h0", &prog(T, 3), now).unwrap();
    s.progress("h1", &prog(T, 2), now).unwrap();
    assert_eq!(ids(&ask(&mut s, "h2", now)), ["h0", "h1"]);
    s.report_bad_parent("h2", T, "h0").unwrap();
    assert_eq!(ids(&ask(&mut s, "h2", now)), ["h1"]);
    assert_eq!(ids(&ask(&mut s, "h3", now)), ["h0", "h1"], "only for the child that reported it");
    s.report_bad_parent("h2", T, "h1").unwrap();
    assert!(matches!(ask(&mut s, "h2", now), Decision::Wait { .. }), "h0 is fetching and healthy: wait");
}

#[test]
fn one_back_to_source_peer_per_task_then_parents() {
    let now = Instant::now();
    let mut s = with_hosts(3);
    assert_eq!(ask(&mut s, "h0", now), Decision::BackToSource);
    assert_eq!(ask(&mut s, "h1", now), Decision::Wait { retry_after: Duration::from_millis(100) });
    assert_eq!(ask(&mut s, "h2", now), Decision::Wait { retry_after: Duration::from_millis(100) });
    assert_eq!(ask(&mut s, "h0", now), Decision::BackToSource, "the fetcher asking again keeps fetching");
    assert_eq!(s.task_summary(&T).unwrap().source.as_deref(), Some("h0"));
    s.progress("h0", &prog(T, 1), now + Duration::from_secs(1)).unwrap();
    assert_eq!(ids(&ask(&mut s, "h1", now + Duration::from_secs(1))), ["h0"]);
    // Another task is independent.
    let other = TaskId([8; 32]);
    assert_eq!(s.request_task("h1", &req(other, "http://o/y"), now).unwrap().0, Decision::BackToSource);
}

#[test]
fn wait_is_bounded_then_back_to_source() {
    let now = Instant::now();
    let mut s = with_hosts(2);
    assert_eq!(ask(&mut s, "h0", now), Decision::BackToSource);
    assert!(matches!(ask(&mut s, "h1", now), Decision::Wait { .. }));
    s.progress("h0", &prog(T, 0), now + Duration::from_secs(3)).unwrap();
    assert!(matches!(ask(&mut s, "h1", now + Duration::from_secs(4)), Decision::Wait { .. }));
    assert_eq!(ask(&mut s, "h1", now + Duration::from_secs(5)), Decision::BackToSource);
    assert_eq!(s.task_summary(&T).unwrap().source.as_deref(), Some("h0"), "h0 is still the elected fetcher");
}

#[test]
fn failover_when_the_fetcher_fails_disconnects_or_stalls() {
    let t0 = Instant::now();
    // TaskFailed
    let mut s = with_hosts(3);
    assert_eq!(ask(&mut s, "h0", t0), Decision::BackToSource);
    assert!(matches!(ask(&mut s, "h1", t0), Decision::Wait { .. }));
    s.failed("h0", T).unwrap();
    assert_eq!(ask(&mut s, "h1", t0), Decision::BackToSource);
    assert!(matches!(ask(&mut s, "h2", t0), Decision::Wait { .. }));

    // Disconnect (and a stale connection of a re-registered host changes nothing).
    let mut s = with_hosts(3);
    assert_eq!(ask(&mut s, "h0", t0), Decision::BackToSource);
    assert!(!s.disconnect(99, "h0"), "not h0's connection");
    assert!(matches!(ask(&mut s, "h1", t0), Decision::Wait { .. }));
    assert!(s.disconnect(0, "h0"));
    assert_eq!(ask(&mut s, "h1", t0), Decision::BackToSource);
    assert_eq!(s.host_count(), 2);

    // Stall: no new piece for stall_timeout. The stalled peer stays a parent for what it has.
    let mut s = with_hosts(3);
    assert_eq!(ask(&mut s, "h0", t0), Decision::BackToSource);
    s.progress("h0", &prog(T, 2), t0 + Duration::from_secs(1)).unwrap();
    s.progress("h0", &prog(T, 2), t0 + Duration::from_secs(9)).unwrap(); // same count: not progress
    assert_eq!(ids(&ask(&mut s, "h1", t0 + Duration::from_secs(10))), ["h0"]);
    assert_eq!(ask(&mut s, "h2", t0 + Duration::from_secs(11)), Decision::BackToSource);
    assert_eq!(s.task_summary(&T).unwrap().source.as_deref(), Some("h2"));
}

#[test]
fn seed_chosen_by_rendezvous_hash_and_triggered_with_the_requesters_url_and_headers() {
    let now = Instant::now();
    let mut s = with_hosts(2);
    let seeds = ["s0", "s1", "s2"];
    for (i, id) in seeds.iter().enumerate() {
        s.register(10 + i as ConnId, host(id, 1000, true));
    }
    let want = rendezvous_pick(&T.0, seeds.iter().copied()).unwrap();
    let r = req(T, "https://o/x?sig=abc");
    let (d, a) = s.request_task("h0", &r, now).unwrap();
    assert_eq!(d, Decision::Wait { retry_after: Duration::from_millis(100) });
    let Some(Action::TriggerSeed { seed_host, trigger }) = a else { panic!("no trigger") };
    assert_eq!(seed_host, want);
    assert_eq!((trigger.url.as_str(), &trigger.headers), (r.url.as_str(), &r.headers));
    assert_eq!((trigger.content_length, trigger.piece_length), (r.content_length, r.piece_length));
    // Nobody else goes to the origin, and the seed is triggered once.
    let (d, a) = s.request_task("h1", &req(T, "https://o/x?sig=other"), now).unwrap();
    assert!(matches!(d, Decision::Wait { .. }) && a.is_none());
    // Once the seed reports a piece, the waiting peers get it as a parent.
    let mut p = prog(T, 1);
    p.back_to_source = true;
    s.progress(want, &p, now + Duration::from_millis(300)).unwrap();
    let d = ask(&mut s, "h0", now + Duration::from_millis(400));
    assert_eq!(ids(&d), [want]);
    let Decision::Parents(ps) = d else { unreachable!() };
    assert!(ps[0].is_seed);
}

#[test]
fn a_private_request_triggers_no_seed_and_its_requester_fetches() {
    let now = Instant::now();
    let mut s = with_hosts(2);
    for (i, id) in ["s0", "s1"].iter().enumerate() {
        s.register(10 + i as ConnId, host(id, 1000, true));
    }
    let mut r = req(T, "https://o/x?sig=abc");
    r.private = true;
    let (d, a) = s.request_task("h0", &r, now).unwrap();
    assert_eq!(d, Decision::BackToSource, "the credentials stay on h0, so h0 fetches");
    assert!(a.is_none(), "no seed is triggered");
    // Another node asking for the same task takes pieces from h0 once it has some.
    let mut p = prog(T, 1);
    p.back_to_source = true;
    s.progress("h0", &p, now + Duration::from_millis(100)).unwrap();
    let d = ask(&mut s, "h1", now + Duration::from_millis(200));
    assert_eq!(ids(&d), ["h0"]);
}

#[test]
fn a_credentialed_mark_sticks_to_the_task_and_survives_a_restart_through_progress() {
    let now = Instant::now();
    let mut s = with_hosts(2);
    assert!(!s.task_credentialed(&T));
    let mut r = req(T, "https://o/x");
    r.credentialed = true;
    s.request_task("h0", &r, now).unwrap();
    assert!(s.task_credentialed(&T));
    ask(&mut s, "h1", now);
    assert!(s.task_credentialed(&T), "a later request without credentials does not clear it");
    // A restarted scheduler learns it again from the holder's re-announcement.
    let mut fresh = with_hosts(2);
    let mut p = prog(T, 0);
    (p.back_to_source, p.credentialed) = (true, true);
    fresh.progress("h0", &p, now).unwrap();
    assert!(fresh.task_credentialed(&T));
}

#[test]
fn failed_seed_is_replaced_by_the_next_one() {
    let now = Instant::now();
    let mut s = with_hosts(1);
    s.register(10, host("s0", 1000, true));
    s.register(11, host("s1", 1000, true));
    let first = match s.request_task("h0", &req(T, "u"), now).unwrap().1 {
        Some(Action::TriggerSeed { seed_host, .. }) => seed_host,
        None => panic!("no trigger"),
    };
    s.failed(&first, T).unwrap();
    let second = match s.request_task("h0", &req(T, "u"), now).unwrap().1 {
        Some(Action::TriggerSeed { seed_host, .. }) => seed_host,
        None => panic!("no trigger"),
    };
    assert_ne!(first, second);
    s.failed(&second, T).unwrap();
    assert_eq!(ask(&mut s, "h0", now), Decision::BackToSource, "no seed left: the requester fetches");
}

#[test]
fn a_seed_requesting_for_itself_fetches() {
    let now = Instant::now();
    let mut s = State::new(cfg());
    s.register(1, host("s0", 1000, true));
    assert_eq!(s.request_task("s0", &req(T, "u"), now).unwrap(), (Decision::BackToSource, None));
}

#[test]
fn re_announced_fetcher_is_kept_after_a_scheduler_restart() {
    let now = Instant::now();
    let mut s = with_hosts(2);
    let mut p = prog(T, 0);
    p.back_to_source = true;
    s.progress("h0", &p, now).unwrap();
    assert!(matches!(ask(&mut s, "h1", now), Decision::Wait { .. }));
}

#[test]
fn leave_and_disconnect_remove_the_host_from_every_task() {
    let now = Instant::now();
    let mut s = with_hosts(2);
    let u = TaskId([9; 32]);
    s.progress("h0", &prog(T, 1), now).unwrap();
    s.progress("h0", &prog(u, 1), now).unwrap();
    s.progress("h1", &prog(u, 1), now).unwrap();
    s.leave_task("h1", u).unwrap();
    assert_eq!(s.task_summary(&u).unwrap().peers, 1);
    s.remove_host("h0");
    assert!(s.task_ids().is_empty(), "tasks without peers are dropped");
    assert_eq!(s.request_task("h0", &req(T, "u"), now), Err(StateError::NotRegistered));
}

#[test]
fn tasks_per_host_are_bounded() {
    let now = Instant::now();
    let mut s = with_hosts(1);
    for i in 0..3 {
        s.progress("h0", &prog(TaskId([i; 32]), 1), now).unwrap();
    }
    let e = s.progress("h0", &prog(TaskId([3; 32]), 1), now).unwrap_err();
    assert!(matches!(e, StateError::TooManyTasks { limit: 3, .. }));
    s.progress("h0", &prog(TaskId([2; 32]), 2), now).unwrap();
}

#[test]
fn hosts_and_tasks_in_all_are_bounded() {
    let now = Instant::now();
    let mut s = with_hosts(2);
    for i in 2..4 {
        s.may_register(&format!("h{i}")).unwrap();
        s.register(i, host(&format!("h{i}"), 1000, false));
    }
    assert_eq!(s.may_register("h9"), Err(StateError::TooManyHosts { limit: 4 }));
    assert!(StateError::TooManyHosts { limit: 4 }.is_fatal());
    assert_eq!(s.may_register("h1"), Ok(()), "a known host re-registers whatever the count");
    for (i, h) in [(0u8, "h0"), (1, "h0"), (2, "h0"), (3, "h1"), (4, "h1")] {
        s.progress(h, &prog(TaskId([i; 32]), 1), now).unwrap();
    }
    let e = s.progress("h2", &prog(TaskId([5; 32]), 1), now).unwrap_err();
    assert_eq!(e, StateError::TooManyTasksInAll { limit: 5 });
    assert!(!e.is_fatal(), "the connection goes on");
    s.progress("h2", &prog(TaskId([4; 32]), 1), now).unwrap();
}

mod random_ops {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Register(u8),
        Request(u8, u8),
        Progress(u8, u8, u32, bool),
        Finished(u8, u8),
        Failed(u8, u8),
        Bad(u8, u8, u8),
        Leave(u8, u8),
        Disconnect(u8),
        Tick(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..5u8).prop_map(Op::Register),
            (0..5u8, 0..3u8).prop_map(|(h, t)| Op::Request(h, t)),
            (0..5u8, 0..3u8, 0..20u32, any::<bool>()).prop_map(|(h, t, n, b)| Op::Progress(h, t, n, b)),
            (0..5u8, 0..3u8).prop_map(|(h, t)| Op::Finished(h, t)),
            (0..5u8, 0..3u8).prop_map(|(h, t)| Op::Failed(h, t)),
            (0..5u8, 0..3u8, 0..5u8).prop_map(|(h, t, p)| Op::Bad(h, t, p)),
            (0..5u8, 0..3u8).prop_map(|(h, t)| Op::Leave(h, t)),
            (0..5u8).prop_map(Op::Disconnect),
            (0..20_000u16).prop_map(Op::Tick),
        ]
    }

    fn check(s: &State) {
        for (id, t) in &s.tasks {
            assert!(!t.peers.is_empty(), "a task without peers is dropped");
            for p in t.peers.keys() {
                assert!(
                    s.hosts.get(p).is_some_and(|h| h.tasks.contains(id)),
                    "peer {p} of {id:?} is a host holding it"
                );
            }
            if let Some(src) = &t.source {
                assert!(t.peers.contains_key(src), "the source is a peer");
            }
            assert!(t.fanout.widest() <= s.cfg.fan_out, "no parent feeds more than fan_out children");
        }
        for (h, host) in &s.hosts {
            for id in &host.tasks {
                assert!(s.tasks.get(id).is_some_and(|t| t.peers.contains_key(h)), "{h} holds {id:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn any_sequence_keeps_the_state_consistent(ops in proptest::collection::vec(op(), 1..80)) {
            let mut s = State::new(cfg());
            let mut now = Instant::now();
            let name = |h: u8| format!("h{h}");
            let task = |t: u8| TaskId([t; 32]);
            for op in ops {
                match op {
                    Op::Register(h) => {
                        s.register(u64::from(h), host(&name(h), 1000 * u64::from(h), h == 4));
                    }
                    Op::Request(h, t) => {
                        if let Ok((d, a)) = s.request_task(&name(h), &req(task(t), "u"), now) {
                            if let Decision::Parents(ps) = &d {
                                assert!(!ps.is_empty() && ps.len() <= 4);
                                assert!(ps.iter().all(|p| p.host_id != name(h)), "never its own parent");
                                let ex = s.tasks[&task(t)].excluded.get(&name(h)).cloned().unwrap_or_default();
                                assert!(ps.iter().all(|p| !ex.contains(&p.host_id)), "never an excluded parent");
                            }
                            if let Some(Action::TriggerSeed { seed_host, .. }) = a {
                                assert_eq!(s.tasks[&task(t)].source.as_deref(), Some(seed_host.as_str()));
                            }
                        }
                    }
                    Op::Progress(h, t, n, b) => {
                        let mut p = prog(task(t), n.min(256));
                        p.back_to_source = b;
                        let _ = s.progress(&name(h), &p, now);
                    }
                    Op::Finished(h, t) => {
                        let _ = s.finished(&name(h), task(t), 1 << 30, 4 << 20, None, now);
                    }
                    Op::Failed(h, t) => {
                        let _ = s.failed(&name(h), task(t));
                    }
                    Op::Bad(h, t, p) => {
                        let _ = s.report_bad_parent(&name(h), task(t), &name(p));
                    }
                    Op::Leave(h, t) => {
                        let _ = s.leave_task(&name(h), task(t));
                    }
                    Op::Disconnect(h) => {
                        s.disconnect(u64::from(h), &name(h));
                    }
                    Op::Tick(ms) => now += Duration::from_millis(u64::from(ms)),
                }
                check(&s);
            }
        }
    }
}
