//! A seed peer's duty: fetch from the origin what the scheduler triggers, ahead of the peers that asked.
//!
//! Each trigger becomes an ordinary engine fetch, named by the trigger's task ID and described by the same
//! identity function the proxy uses, so a seed's task is the one its peers wait for. When the URL names a
//! digest that is the task ID, the seed verifies the content against it too.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::identity::{identify, DEFAULT_FILTERED_PARAMS};
use super::{Engine, FetchRequest};
use crate::scheduler::SeedTrigger;

impl Engine {
    /// Fetches every trigger until the scheduler client closes the channel (at shutdown).
    pub async fn serve_seed_triggers(self: Arc<Self>, mut triggers: mpsc::Receiver<SeedTrigger>) {
        // Bounded by the channel: it ends when the scheduler client goes away.
        while let Some(t) = triggers.recv().await {
            let span = tracing::info_span!("seed", task = %t.task_id);
            tokio::spawn(self.clone().seed_one(t).instrument(span));
        }
    }

    async fn seed_one(self: Arc<Self>, t: SeedTrigger) {
        let req = trigger_request(t);
        let id = req.task_id;
        let done = match self.fetch(req).await {
            Ok(f) => f.task.wait_complete().await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = done {
            tracing::warn!(task = %id, error = %e, "seed download failed");
        }
    }
}

/// The fetch a trigger asks for: the URL as the requester sent it (signed parameters included), its
/// display URL, and the digest to verify when the URL's own digest is the task ID.
fn trigger_request(t: SeedTrigger) -> FetchRequest {
    let id = t.url.parse::<http::Uri>().ok().and_then(|u| identify(&u, DEFAULT_FILTERED_PARAMS, true));
    let expected_sha256 = id.as_ref().and_then(|i| i.digest).filter(|d| *d == t.task_id.0);
    let display_url = id.map_or_else(|| t.url.clone(), |i| i.display_url);
    FetchRequest { task_id: t.task_id, url: t.url, headers: t.headers, display_url, expected_sha256 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::TaskId;

    const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

    fn trigger(id: TaskId, url: &str) -> SeedTrigger {
        SeedTrigger { task_id: id, url: url.into(), headers: vec![], content_length: None, piece_length: None }
    }

    #[test]
    fn a_trigger_is_verified_only_against_a_digest_that_is_its_task_id() {
        let mut d = [0u8; 32];
        hex::decode_to_slice(OID, &mut d).unwrap();
        let r = trigger_request(trigger(TaskId(d), &format!("http://o.test/x/{OID}?X-Amz-Signature=s")));
        assert_eq!(r.expected_sha256, Some(d));
        assert_eq!(r.display_url, format!("http://o.test/x/{OID}"));
        assert!(r.url.contains("X-Amz-Signature"), "the origin gets the signed URL");
        let r = trigger_request(trigger(TaskId([1; 32]), &format!("http://o.test/x/{OID}")));
        assert_eq!(r.expected_sha256, None, "a digest that is not the task ID verifies nothing");
        let r = trigger_request(trigger(TaskId([1; 32]), "not a url"));
        assert_eq!(r.display_url, "not a url");
    }
}
