//! A seed peer's duty: fetch from the origin what the scheduler triggers, ahead of the peers that asked.
//!
//! Each trigger becomes an ordinary engine fetch, named by the trigger's task ID and described by the same
//! identity function the proxy uses, so a seed's task is the one its peers wait for. When the URL names a
//! digest that is the task ID, the seed verifies the content against it too.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::identity::identify;
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
        let id = t.task_id;
        let req = match trigger_request(t, &self.cfg.seed_filtered_params) {
            Ok(r) => r,
            Err(why) => {
                // A member asked the cluster to store some URL's bytes under an ID that is not that URL's:
                // refused, and the scheduler told, so it sends the requester to the origin instead.
                tracing::warn!(task = %id, reason = why, "seed trigger refused");
                if let Some(s) = &self.scheduler {
                    let _ = s.task_failed(id, why).await;
                }
                return;
            }
        };
        let done = match self.fetch(req).await {
            Ok(f) => f.task.wait_complete().await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = done {
            tracing::warn!(task = %id, error = %e, "seed download failed");
        }
    }
}

/// Why a trigger is not fetched (for the log and the scheduler).
const ID_NOT_THE_URLS: &str = "the task ID is neither a digest to verify nor the identity of the URL";
const BAD_URL: &str = "the trigger's URL does not parse";

/// The fetch a trigger asks for: the URL as the requester sent it (signed parameters included), its
/// display URL, and the digest to verify. Refused unless the task ID is one the seed can stand behind: a
/// digest it verifies the bytes against (the URL's own, or the request's `X-Shoal-Digest`), or the ID this
/// seed's own rules give the URL (`filters`: the parameters its configuration leaves out of IDs), so no
/// member can have a seed store one URL's bytes under another object's ID.
fn trigger_request(t: SeedTrigger, filters: &[String]) -> Result<FetchRequest, &'static str> {
    let uri = t.url.parse::<http::Uri>().map_err(|_| BAD_URL)?;
    let named = identify(&uri, filters, true).ok_or(BAD_URL)?;
    let by_url = identify(&uri, filters, false).ok_or(BAD_URL)?;
    let header_digest = t
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-shoal-digest"))
        .find_map(|(_, v)| v.trim().strip_prefix("sha256:").and_then(hex32));
    let expected_sha256 = [named.digest, header_digest].into_iter().flatten().find(|d| *d == t.task_id.0);
    if expected_sha256.is_none() && by_url.task_id != t.task_id {
        return Err(ID_NOT_THE_URLS);
    }
    let credentials = super::credentials(&uri, &t.headers, |n| super::identity::filtered(n, filters));
    Ok(FetchRequest {
        task_id: t.task_id,
        url: t.url,
        headers: t.headers,
        display_url: by_url.display_url,
        expected_sha256,
        credentials,
    })
}

fn hex32(h: &str) -> Option<[u8; 32]> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(h, &mut d).ok().map(|_| d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::identity::DEFAULT_FILTERED_PARAMS;
    use crate::storage::TaskId;

    const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

    fn trigger(id: TaskId, url: &str) -> SeedTrigger {
        SeedTrigger { task_id: id, url: url.into(), headers: vec![], content_length: None, piece_length: None }
    }

    fn filters() -> Vec<String> {
        DEFAULT_FILTERED_PARAMS.iter().map(|s| s.to_string()).collect()
    }

    fn oid() -> TaskId {
        TaskId(hex32(OID).unwrap())
    }

    #[test]
    fn a_digest_named_trigger_is_verified_against_its_digest() {
        let r = trigger_request(trigger(oid(), &format!("http://o.test/x/{OID}?X-Amz-Signature=s")), &filters());
        let r = r.unwrap();
        assert_eq!(r.expected_sha256, Some(oid().0));
        assert_eq!(r.display_url, format!("http://o.test/x/{OID}"));
        assert!(r.url.contains("X-Amz-Signature"), "the origin gets the signed URL");
        let mut t = trigger(TaskId([7; 32]), "http://o.test/model.bin");
        t.headers.push(("X-Shoal-Digest".into(), format!("sha256:{}", hex::encode([7u8; 32]))));
        assert_eq!(trigger_request(t, &filters()).unwrap().expected_sha256, Some([7; 32]));
    }

    #[test]
    fn a_url_named_trigger_must_carry_its_urls_own_id() {
        let url = "http://o.test/model.bin?token=abc&rev=2";
        let own = identify(&url.parse().unwrap(), &filters(), false).unwrap().task_id;
        let r = trigger_request(trigger(own, url), &filters()).unwrap();
        assert_eq!(r.expected_sha256, None);
        assert_eq!(r.display_url, "http://o.test/model.bin?rev=2");
        // Another object's ID, a digest the URL does not name, a parameter the seed does not filter:
        let other = identify(&"http://o.test/other.bin".parse().unwrap(), &filters(), false).unwrap().task_id;
        assert_eq!(trigger_request(trigger(other, url), &filters()).unwrap_err(), ID_NOT_THE_URLS);
        assert_eq!(trigger_request(trigger(oid(), url), &filters()).unwrap_err(), ID_NOT_THE_URLS);
        let stripped = identify(&"http://o.test/model.bin?token=abc".parse().unwrap(), &filters(), false).unwrap();
        assert_eq!(trigger_request(trigger(stripped.task_id, url), &filters()).unwrap_err(), ID_NOT_THE_URLS);
        assert_eq!(trigger_request(trigger(own, "not a url"), &filters()).unwrap_err(), BAD_URL);
    }
}
