//! Back-to-source against a real HTTP origin in its four flavours (Range or not, Content-Length or
//! chunked): exact bytes, exact lengths, errors passed through, truncation never taken for the end.

mod common;

use bytes::Bytes;
use common::origin::{Origin, FLAVOURS};
use common::*;
use shoal::engine::{stream_into, EngineError, IngestBudget, OriginClient};
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// An origin client with the daemon's default timeouts and destination policy.
fn client() -> OriginClient {
    OriginClient::new(Duration::from_secs(5), Duration::from_secs(30), shoal::upstream::Destinations::standard())
        .unwrap()
}

#[test]
fn every_flavour_streams_exact_bytes_into_a_task() {
    let piece = 64 << 10;
    let obj = Bytes::from(content(50, 10 * piece as usize + 321));
    for (i, fl) in FLAVOURS.iter().enumerate() {
        let origin = Origin::start("127.0.0.1", *fl);
        origin.put("/lfs/obj", obj.clone());
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), engines()[i % engines().len()]);
        rt().block_on(async {
            let client = client();
            let resp = client.get(&origin.url("/lfs/obj"), &[("X-Test".into(), "1".into())], None).await.unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(resp.content_length, fl.content_length.then_some(obj.len() as u64), "{fl:?}");
            assert!(!resp.range_proven);
            assert_eq!(resp.headers.get("etag").unwrap(), "\"test-etag\"");
            let s = spec(50, resp.content_length, piece, Some(sha256(&obj)));
            let task = store.create(&s).unwrap();
            let n = stream_into(&task, resp, 4, Duration::from_secs(30), &IngestBudget::new(32 << 20)).await.unwrap();
            assert_eq!(n, obj.len() as u64);
            assert_eq!(task.wait_complete().await.unwrap(), sha256(&obj), "{fl:?}");
        });
        assert_eq!(origin.bytes_sent(), obj.len() as u64, "{fl:?}: one sequential GET");
    }
}

#[test]
fn a_body_read_to_its_end_leaves_its_connection_for_the_next_get() {
    let obj = Bytes::from(content(52, 300_000));
    for fl in FLAVOURS {
        let origin = Origin::start("127.0.0.1", fl);
        origin.put("/o", obj.clone());
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), engines()[0]);
        rt().block_on(async {
            let client = client();
            for seed in 0..3u8 {
                let resp = client.get(&origin.url("/o"), &[], None).await.unwrap();
                let s = spec(60 + seed, resp.content_length, 64 << 10, Some(sha256(&obj)));
                let task = store.create(&s).unwrap();
                stream_into(&task, resp, 4, Duration::from_secs(30), &IngestBudget::new(32 << 20)).await.unwrap();
                assert_eq!(task.wait_complete().await.unwrap(), sha256(&obj), "{fl:?}");
            }
            // A body left unread closes its connection: the next GET dials a new one.
            drop(client.get(&origin.url("/o"), &[], None).await.unwrap());
            let resp = client.get(&origin.url("/o"), &[], None).await.unwrap();
            let task = store.create(&spec(70, resp.content_length, 64 << 10, Some(sha256(&obj)))).unwrap();
            stream_into(&task, resp, 4, Duration::from_secs(30), &IngestBudget::new(32 << 20)).await.unwrap();
            assert_eq!(task.wait_complete().await.unwrap(), sha256(&obj), "{fl:?}");
        });
        assert_eq!(origin.requests(), 5, "{fl:?}");
        assert_eq!(origin.connections(), 2, "{fl:?}: three whole bodies over one connection, then a new one");
    }
}

#[test]
fn range_is_trusted_only_when_the_origin_proves_it() {
    let obj = Bytes::from(content(51, 100_000));
    for fl in FLAVOURS {
        let origin = Origin::start("127.0.0.1", fl);
        origin.put("/o", obj.clone());
        rt().block_on(async {
            let client = client();
            let resp = client.get(&origin.url("/o"), &[], Some((1000, Some(1999)))).await.unwrap();
            if fl.ranges {
                assert_eq!(resp.status, 206);
                assert!(resp.range_proven);
                assert_eq!(resp.content_length, Some(100_000), "total from Content-Range");
            } else {
                // A 200 to a Range request: the whole object, and no claim of Range support.
                assert_eq!(resp.status, 200);
                assert!(!resp.range_proven);
            }
        });
    }
}

#[test]
fn origin_errors_and_truncation_fail_loudly() {
    let piece = 64 << 10;
    let obj = Bytes::from(content(52, 8 * piece as usize));
    for fl in FLAVOURS {
        let origin = Origin::start("127.0.0.1", fl);
        origin.put("/cut", obj.clone());
        origin.truncate("/cut", 3 * piece as usize);
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), engines()[0]);
        rt().block_on(async {
            let client = client();
            for code in [404u16, 500] {
                match client.get(&origin.url(&format!("/status/{code}")), &[], None).await {
                    Err(EngineError::OriginStatus { status, headers }) => {
                        assert_eq!(status.as_u16(), code);
                        assert_eq!(headers.get("x-origin-error").unwrap(), "yes");
                    }
                    other => panic!("{code}: {:?}", other.map(|r| r.status)),
                }
            }
            let resp = client.get(&origin.url("/cut"), &[], None).await.unwrap();
            let task = store.create(&spec(52, resp.content_length, piece, Some(sha256(&obj)))).unwrap();
            let e = stream_into(&task, resp, 4, Duration::from_secs(30), &IngestBudget::new(32 << 20)).await;
            assert!(
                matches!(e, Err(EngineError::OriginBody { .. }) | Err(EngineError::Truncated { .. })),
                "{fl:?}: {e:?}"
            );
            assert!(!task.is_complete());
            assert!(client.get("ftp://x/y", &[], None).await.is_err());
            assert!(client.get(&origin.url("/o"), &[("Bad Header".into(), "x".into())], None).await.is_err());
        });
    }
}
