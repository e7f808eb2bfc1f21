//! How many children each parent of a task feeds: the bound that turns "everyone takes the newest pieces
//! from the seed" into a distribution tree.
//!
//! A parent feeding `StateConfig::fan_out` children is not offered to more until some of them finish,
//! leave or ask again. Children that find every holder full take peers that have started the task as
//! parents instead (they download it themselves, so their pieces follow a piece time behind): the seed
//! feeds a few children, those feed the next ones, the tree's depth grows with log(N), and no uplink
//! carries more than `fan_out` copies of the newest pieces.
//!
//! Each child counts whole on every parent it is given, not as 1/m of one: in a swarm limited by the
//! origin every child is idle at the frontier and asks for each new piece as soon as one of its parents
//! has it, and the first to have it is the parent nearest the origin. A count rather than the peers'
//! reported upload rates: reports lag by seconds, while a swarm's children all ask within milliseconds of
//! each other; the count is exact at the moment of each decision.

use std::collections::HashMap;

/// Per task: who feeds whom.
#[derive(Default)]
pub(super) struct FanOut {
    /// child → the parents it was last given.
    parents_of: HashMap<String, Vec<String>>,
    /// parent → how many children it feeds.
    children: HashMap<String, u32>,
    /// child → its level in the tree: one below its shallowest parent (a peer that is nobody's child, the
    /// fetcher or a holder of the whole task, is level 0).
    depth: HashMap<String, u32>,
}

impl FanOut {
    /// How many children `parent` feeds.
    pub(super) fn children(&self, parent: &str) -> u32 {
        self.children.get(parent).copied().unwrap_or(0)
    }

    /// `peer`'s level in the tree (0: fed by no one).
    pub(super) fn depth(&self, peer: &str) -> u32 {
        self.depth.get(peer).copied().unwrap_or(0)
    }

    /// The deepest level in the tree now.
    pub(super) fn deepest(&self) -> u32 {
        self.depth.values().copied().max().unwrap_or(0)
    }

    /// Whether `peer` was given parents (it is downloading from the swarm).
    pub(super) fn is_child(&self, peer: &str) -> bool {
        self.parents_of.contains_key(peer)
    }

    /// `child` now downloads from `parents` (replacing what it was given before).
    pub(super) fn assign(&mut self, child: &str, parents: Vec<String>) {
        self.release(child);
        if parents.is_empty() {
            return;
        }
        for p in &parents {
            *self.children.entry(p.clone()).or_insert(0) += 1;
        }
        let level = parents.iter().map(|p| self.depth(p)).min().unwrap_or(0) + 1;
        self.depth.insert(child.to_owned(), level);
        self.parents_of.insert(child.to_owned(), parents);
    }

    /// `child` no longer downloads (it finished, failed, left or asks again).
    pub(super) fn release(&mut self, child: &str) {
        self.depth.remove(child);
        let Some(parents) = self.parents_of.remove(child) else { return };
        for p in parents {
            if let Some(n) = self.children.get_mut(&p) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.children.remove(&p);
                }
            }
        }
    }

    /// `peer` is gone from the task: it feeds no one and is fed by no one. Its children keep their lists
    /// (they find out by themselves and ask again).
    pub(super) fn forget(&mut self, peer: &str) {
        self.release(peer);
        self.children.remove(peer);
    }

    /// The most children any parent feeds.
    pub(super) fn widest(&self) -> u32 {
        self.children.values().copied().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_assignments() {
        let mut f = FanOut::default();
        f.assign("c1", vec!["seed".into()]);
        f.assign("c2", vec!["seed".into(), "c1".into()]);
        assert_eq!((f.children("seed"), f.children("c1"), f.widest()), (2, 1, 2));
        assert_eq!((f.depth("seed"), f.depth("c1"), f.depth("c2"), f.deepest()), (0, 1, 1, 1));
        assert!(f.is_child("c2") && !f.is_child("seed"));
        // Asking again replaces the old assignment.
        f.assign("c2", vec!["c1".into()]);
        assert_eq!((f.children("seed"), f.children("c1")), (1, 1));
        assert_eq!(f.depth("c2"), 2, "one below its shallowest parent");
        f.release("c1");
        f.release("c2");
        assert_eq!((f.children("seed"), f.children("c1"), f.widest()), (0, 0, 0));
    }

    #[test]
    fn a_parent_that_leaves_feeds_no_one() {
        let mut f = FanOut::default();
        f.assign("c1", vec!["p".into(), "q".into()]);
        f.forget("p");
        assert_eq!(f.children("p"), 0);
        f.release("c1");
        assert_eq!(f.children("q"), 0);
    }
}
