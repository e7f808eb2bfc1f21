//! `shoal lfs agent`: git-lfs's standalone custom transfer agent, end to end with real git + git-lfs
//! against giftless over HTTPS (a test CA; no http.proxy, no insteadOf).

mod common;

use common::lfs::{git_home, publish, Giftless};
use common::*;

#[test]
fn https_giftless_publishes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Giftless::start_https(tmp.path());
    let home = git_home(&tmp.path().join("home"));
    let files = vec![("model.bin", content(90, 3 << 20))];
    publish(&home, &tmp.path().join("work"), &tmp.path().join("repo.git"), &server, &files);
    assert_eq!(server.object_requests("PUT"), 1);
}
