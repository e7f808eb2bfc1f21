//! `shoal lfs agent`: git-lfs's standalone custom transfer agent, end to end with real git + git-lfs
//! against giftless over HTTPS (a test CA; no http.proxy, no insteadOf): clone cold on A, then on B
//! (no object GET reaches the origin), again on A (local hits), a push through the agent, the
//! in-process fallback with no daemon, and install/uninstall writing and removing exactly their keys.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cluster::{self, shoal};
use common::lfs::{git, git_for, git_home, publish, run, Giftless};
use common::*;

/// A git home with the agent installed globally (as a user would), talking to the daemon at `daemon`.
fn agent_home(dir: &Path) -> PathBuf {
    let home = git_home(dir);
    let mut c = shoal();
    c.args(["lfs", "install", "--global"]).env("HOME", &home).env("GIT_CONFIG_GLOBAL", home.join(".gitconfig"));
    run(c, "shoal lfs install");
    home
}

/// git in `home` trusting the origin's CA, its agent pointed at the daemon proxy `daemon`.
fn git_agent(home: &Path, server: &Giftless, daemon: &str, data_dir: &Path) -> Command {
    let mut c = git_for(home, server);
    c.env("SHOAL_DAEMON", daemon).env("SHOAL_DATA_DIR", data_dir).env("SHOAL_LOG", "info,shoal=debug");
    c
}

fn clone(c: Command, bare: &Path, dest: &Path) {
    clone_url(c, &format!("file://{}", bare.display()), dest)
}

fn clone_url(mut c: Command, url: &str, dest: &Path) {
    c.args(["clone", "-q", url]).arg(dest);
    run(c, "git clone with the shoal agent");
}

fn check(dir: &Path, files: &[(&str, Vec<u8>)]) {
    for (name, bytes) in files {
        let got = std::fs::read(dir.join(name)).unwrap();
        assert!(got.len() == bytes.len() && sha256(&got) == sha256(bytes), "{name} differs in {}", dir.display());
    }
}

fn batch_calls(server: &Giftless) -> usize {
    let log = std::fs::read_to_string(&server.access_log).unwrap_or_default();
    log.lines().filter(|l| l.contains("\"POST ") && l.contains("/objects/batch")).count()
}

#[test]
fn clone_cold_then_p2p_then_local_hits_then_push_over_https() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Giftless::start_https(tmp.path());
    let ca = server.ca.clone().unwrap();
    let publisher = git_home(&tmp.path().join("publisher"));
    let files = vec![
        ("model.bin", content(90, 12 << 20)),
        ("data.bin", content(91, (3 << 20) + 777)),
        ("small.bin", content(92, 50_000)),
    ];
    let bare = tmp.path().join("repo.git");
    publish(&publisher, &tmp.path().join("work"), &bare, &server, &files);
    let uploaded_gets = server.object_gets();

    let sched = cluster::scheduler("127.0.0.3");
    let env = [("SSL_CERT_FILE", ca.as_path())];
    let a = cluster::daemon_env("127.0.0.72", &[sched.addr], false, &tmp.path().join("a"), "", &env);
    let b = cluster::daemon_env("127.0.0.73", &[sched.addr], false, &tmp.path().join("b"), "", &env);
    let home = agent_home(&tmp.path().join("home"));
    let nowhere = tmp.path().join("unused-cache");
    let on = |d: &cluster::Daemon| git_agent(&home, &server, &d.proxy.to_string(), &nowhere);

    let batches = batch_calls(&server);
    clone(on(&a), &bare, &tmp.path().join("clone-a1"));
    check(&tmp.path().join("clone-a1"), &files);
    assert_eq!(server.object_gets() - uploaded_gets, files.len(), "cold on A: each object once from the origin");
    assert_eq!(batch_calls(&server) - batches, files.len(), "one batch call per object");
    assert!(cluster::cached_files(&a.data_dir) >= 2 * files.len(), "A cached what it fetched");
    assert!(!nowhere.exists(), "the daemon answered: no in-process engine ran");

    clone(on(&b), &bare, &tmp.path().join("clone-b"));
    check(&tmp.path().join("clone-b"), &files);
    assert_eq!(server.object_gets() - uploaded_gets, files.len(), "on B: the objects came from A, not the origin");

    clone(on(&a), &bare, &tmp.path().join("clone-a2"));
    check(&tmp.path().join("clone-a2"), &files);
    assert_eq!(server.object_gets() - uploaded_gets, files.len(), "again on A: local hits");

    // A push through the agent: batch, PUT, verify; then the new object reaches a clone on B.
    let work = tmp.path().join("clone-a1");
    let new = ("new.bin", content(93, (2 << 20) + 5));
    std::fs::write(work.join(new.0), &new.1).unwrap();
    let g = |args: &[&str]| {
        let mut c = on(&a);
        c.current_dir(&work).args(args);
        c
    };
    run(g(&["add", "new.bin"]), "git add");
    run(g(&["commit", "-q", "-m", "a new LFS object"]), "git commit");
    let puts = server.object_requests("PUT");
    run(g(&["push", "-q", "origin", "main"]), "git push through the agent");
    assert_eq!(server.object_requests("PUT") - puts, 1, "the push uploaded the new object once");
    let log = std::fs::read_to_string(&server.access_log).unwrap();
    assert!(log.lines().any(|l| l.contains("\"POST ") && l.contains("/verify")), "the upload was verified");
    let mut all = files.clone();
    all.push((new.0, new.1.clone()));
    clone(on(&b), &bare, &tmp.path().join("clone-b2"));
    check(&tmp.path().join("clone-b2"), &all);
}

#[test]
fn without_a_daemon_the_agent_downloads_in_process_into_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Giftless::start_https(tmp.path());
    let publisher = git_home(&tmp.path().join("publisher"));
    let files: Vec<(&str, Vec<u8>)> = (0..5u64)
        .map(|i| (["a.bin", "b.bin", "c.bin", "d.bin", "e.bin"][i as usize], content(100 + i, 700_000)))
        .collect();
    let bare = tmp.path().join("repo.git");
    publish(&publisher, &tmp.path().join("work"), &bare, &server, &files);
    let home = agent_home(&tmp.path().join("home"));
    // Nothing listens there: git-lfs's workers each fall back to an engine of their own, one at a time
    // on the shared cache directory.
    let closed = cluster::free_addr("127.0.0.1").to_string();
    let cache = tmp.path().join("cache");
    let mut c = git_agent(&home, &server, &closed, &cache);
    // The in-process engine fetches the origin itself and must trust its CA too.
    c.env("SSL_CERT_FILE", server.ca.as_ref().unwrap());
    clone(c, &bare, &tmp.path().join("clone"));
    check(&tmp.path().join("clone"), &files);
    assert_eq!(cluster::cached_files(&cache), 2 * files.len(), "every object cached by the in-process engine");
}

#[test]
fn install_and_uninstall_touch_only_their_own_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let home = git_home(&tmp.path().join("home"));
    let list = || {
        let mut c = git(&home);
        c.args(["config", "--global", "--list"]);
        run(c, "git config --list")
    };
    let before = list();
    let sh = |args: &[&str]| {
        let mut c = shoal();
        c.args(args).env("HOME", &home).env("GIT_CONFIG_GLOBAL", home.join(".gitconfig"));
        c
    };
    run(sh(&["lfs", "install", "--global", "--concurrency", "4"]), "install");
    let after = list();
    for k in [
        "lfs.standalonetransferagent=shoal",
        "lfs.customtransfer.shoal.args=lfs agent",
        "lfs.customtransfer.shoal.concurrent=true",
        "lfs.concurrenttransfers=4",
    ] {
        assert!(after.lines().any(|l| l == k), "{k} missing:\n{after}");
    }
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_shoal")).unwrap();
    assert!(after.contains(&format!("lfs.customtransfer.shoal.path={}", exe.display())), "{after}");
    run(sh(&["lfs", "install", "--global"]), "install twice");
    run(sh(&["lfs", "uninstall", "--global"]), "uninstall");
    assert_eq!(list(), before, "uninstall leaves the config as it was");

    // A user's own concurrency stays; another standalone agent is not replaced.
    let mut c = git(&home);
    c.args(["config", "--global", "lfs.concurrenttransfers", "3"]);
    run(c, "git config");
    let before = list();
    run(sh(&["lfs", "install", "--global"]), "install");
    assert!(list().contains("lfs.concurrenttransfers=3"));
    run(sh(&["lfs", "uninstall", "--global"]), "uninstall");
    assert_eq!(list(), before, "the user's lfs.concurrenttransfers survives uninstall");
    let mut c = git(&home);
    c.args(["config", "--global", "lfs.standalonetransferagent", "other"]);
    run(c, "git config");
    let o = sh(&["lfs", "install", "--global"]).output().unwrap();
    assert!(!o.status.success(), "install over another agent must fail");
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"other\""), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Commits `text` as `name` on top of `bare`'s main (no hooks: nothing to upload) with `home`'s git.
fn commit_raw(home: &Path, bare: &Path, work: &Path, edit: impl FnOnce(&Path)) {
    let mut c = git(home);
    c.env("GIT_LFS_SKIP_SMUDGE", "1").args(["clone", "-q"]).arg(format!("file://{}", bare.display())).arg(work);
    run(c, "clone to edit");
    edit(work);
    let g = |args: &[&str]| {
        let mut c = git(home);
        c.current_dir(work).args(args);
        c
    };
    run(g(&["add", "-A"]), "git add");
    run(g(&["commit", "-q", "-m", "edit"]), "git commit");
    run(g(&["push", "-q", "--no-verify", "origin", "main"]), "git push");
}

#[test]
fn an_object_the_server_lacks_fails_the_checkout_with_the_servers_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Giftless::start_https(tmp.path());
    let publisher = git_home(&tmp.path().join("publisher"));
    let files = vec![("real.bin", content(110, 100_000))];
    let bare = tmp.path().join("repo.git");
    publish(&publisher, &tmp.path().join("work"), &bare, &server, &files);
    // A pointer to an object nobody uploaded.
    let missing = "3".repeat(64);
    commit_raw(&publisher, &bare, &tmp.path().join("edit"), |w| {
        let pointer = format!("version https://git-lfs.github.com/spec/v1\noid sha256:{missing}\nsize 1234\n");
        std::fs::write(w.join("missing.bin"), pointer).unwrap();
    });
    let sched = cluster::scheduler("127.0.0.3");
    let env = [("SSL_CERT_FILE", server.ca.as_deref().unwrap())];
    let a = cluster::daemon_env("127.0.0.74", &[sched.addr], false, &tmp.path().join("a"), "", &env);
    let home = agent_home(&tmp.path().join("home"));
    let mut c = git_agent(&home, &server, &a.proxy.to_string(), &tmp.path().join("unused"));
    c.args(["clone", "-q"]).arg(format!("file://{}", bare.display())).arg(tmp.path().join("clone"));
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the checkout of a missing object must fail: {err}");
    // giftless refuses the whole batch with a 404; git-lfs shows the code and the server's words.
    assert!(err.contains(&missing) && err.contains("[404] the LFS server answered 404"), "{err}");
    assert!(err.contains("Cannot find any of the requested objects"), "{err}");
}

#[test]
fn an_ssh_remote_gets_its_api_and_headers_from_git_lfs_authenticate() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Giftless::start_https(tmp.path());
    let publisher = git_home(&tmp.path().join("publisher"));
    let files = vec![("model.bin", content(120, 2 << 20))];
    let bare = tmp.path().join("repo.git");
    publish(&publisher, &tmp.path().join("work"), &bare, &server, &files);
    // No lfs.url: the agent must derive the API from the ssh remote.
    commit_raw(&publisher, &bare, &tmp.path().join("edit"), |w| std::fs::remove_file(w.join(".lfsconfig")).unwrap());
    // An ssh that runs git's commands here and answers git-lfs-authenticate with the API's address.
    let log = tmp.path().join("ssh.log");
    let ssh = tmp.path().join("fake-ssh");
    let answer = format!(r#"{{"href":"{}","header":{{"X-Shoal-Test":"from-ssh"}}}}"#, server.url());
    std::fs::write(
        &ssh,
        format!(
            "#!/bin/sh\nwhile [ \"$1\" = -p ] || [ \"$1\" = -o ]; do shift 2; done\nshift\n\
             case \"$*\" in\n  git-lfs-authenticate*) echo \"$*\" >> '{}'; echo '{answer}' ;;\n  *) exec sh -c \"$*\" ;;\nesac\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sched = cluster::scheduler("127.0.0.3");
    let env = [("SSL_CERT_FILE", server.ca.as_deref().unwrap())];
    let a = cluster::daemon_env("127.0.0.75", &[sched.addr], false, &tmp.path().join("a"), "", &env);
    let home = agent_home(&tmp.path().join("home"));
    let mut c = git_agent(&home, &server, &a.proxy.to_string(), &tmp.path().join("unused"));
    c.env("GIT_SSH_COMMAND", &ssh).env("GIT_SSH_VARIANT", "simple");
    clone_url(c, &format!("{}:{}", common::lfs::LFS_HOST, bare.display()), &tmp.path().join("clone"));
    check(&tmp.path().join("clone"), &files);
    let asked = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(asked.contains(&format!("git-lfs-authenticate '{}' download", bare.display())), "{asked}");
    assert!(cluster::cached_files(&a.data_dir) >= 2, "the download went through the daemon");
}

/// A git credential helper answering `password` for every URL and logging each operation
/// (get, store, erase) to `log`.
fn credential_helper(dir: &Path, password: &str, log: &Path) -> PathBuf {
    let p = dir.join(format!("helper-{}", log.file_name().unwrap().to_string_lossy()));
    let script = format!(
        "#!/bin/sh\necho \"$1\" >> '{}'\ncat > /dev/null\nif [ \"$1\" = get ]; then echo username=_jwt; echo password={password}; fi\n",
        log.display()
    );
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

#[test]
fn a_private_server_gets_gits_credentials_and_the_helpers_hear_how_they_fared() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Giftless::start_https_private(tmp.path());
    let token = Giftless::token();
    let publisher = git_home(&tmp.path().join("publisher"));
    let plog = tmp.path().join("publisher.log");
    let helper = credential_helper(tmp.path(), &token, &plog);
    let mut c = git(&publisher);
    c.args(["config", "--global", "credential.helper"]).arg(&helper);
    run(c, "git config credential.helper");
    let files = vec![("model.bin", content(130, 1 << 20))];
    let bare = tmp.path().join("repo.git");
    publish(&publisher, &tmp.path().join("work"), &bare, &server, &files);

    let sched = cluster::scheduler("127.0.0.3");
    let env = [("SSL_CERT_FILE", server.ca.as_deref().unwrap())];
    let a = cluster::daemon_env("127.0.0.76", &[sched.addr], false, &tmp.path().join("a"), "", &env);
    let clone_with = |password: &str, name: &str| {
        let home = agent_home(&tmp.path().join(format!("home-{name}")));
        let log = tmp.path().join(format!("{name}.log"));
        let mut c = git(&home);
        c.args(["config", "--global", "credential.helper"]).arg(credential_helper(tmp.path(), password, &log));
        run(c, "git config credential.helper");
        let mut c = git_agent(&home, &server, &a.proxy.to_string(), &tmp.path().join("unused"));
        c.args(["clone", "-q"]).arg(format!("file://{}", bare.display())).arg(tmp.path().join(name));
        let o = c.output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            std::fs::read_to_string(&log).unwrap_or_default(),
        )
    };

    let (ok, err, ops) = clone_with(&token, "good");
    assert!(ok, "{err}");
    check(&tmp.path().join("good"), &files);
    assert!(ops.lines().any(|l| l == "get") && ops.lines().any(|l| l == "store"), "filled, then approved: {ops}");
    assert!(!ops.lines().any(|l| l == "erase"), "{ops}");

    let (ok, err, ops) = clone_with("not-the-token", "bad");
    assert!(!ok, "a refused credential must fail the checkout");
    assert!(err.contains("authentication failed"), "{err}");
    assert!(ops.lines().any(|l| l == "erase"), "the helpers were told to forget it: {ops}");
    assert!(!ops.lines().any(|l| l == "store"), "{ops}");
}
