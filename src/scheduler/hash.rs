//! Rendezvous (highest-random-weight) hashing: every peer computes the same owner for a task from the same
//! list of names, in any order, with no coordination; removing one name only moves the keys it owned.

use sha2::{Digest, Sha256};

/// The weight of `node` for `key`. sha256 rather than a std hasher because the value must be identical on
/// every peer, across platforms and Rust versions.
pub fn rendezvous_score(key: &[u8], node: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(key);
    h.update([0u8]);
    h.update(node.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The node with the highest weight for `key` (ties, practically impossible, go to the smaller name so the
/// answer never depends on the input order). None when `nodes` is empty.
pub fn rendezvous_pick<'a, I>(key: &[u8], nodes: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    nodes
        .into_iter()
        .map(|n| (rendezvous_score(key, n), n))
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)))
        .map(|x| x.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_pick_in_any_order_and_spreads() {
        let nodes = ["10.0.0.1:8002", "10.0.0.2:8002", "10.0.0.3:8002"];
        let mut rev = nodes;
        rev.reverse();
        let mut counts = [0usize; 3];
        for k in 0u32..300 {
            let key = k.to_be_bytes();
            let a = rendezvous_pick(&key, nodes.iter().copied()).unwrap();
            assert_eq!(Some(a), rendezvous_pick(&key, rev.iter().copied()));
            counts[nodes.iter().position(|n| *n == a).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
        assert_eq!(rendezvous_pick(b"k", std::iter::empty()), None);
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let all = ["a", "b", "c", "d"];
        for k in 0u32..200 {
            let key = k.to_be_bytes();
            let before = rendezvous_pick(&key, all.iter().copied()).unwrap();
            let after = rendezvous_pick(&key, all.iter().copied().filter(|n| *n != "c")).unwrap();
            if before != "c" {
                assert_eq!(before, after);
            }
        }
    }
}
