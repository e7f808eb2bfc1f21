use proptest::prelude::*;

use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::{decode, send, Trickle, Wire};

fn run(wire: &[u8], chunk: usize, slice: usize) -> Result<(u16, Vec<u8>), String> {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(decode(wire, chunk, slice))
}

/// A wire over the standard connector, keeping idle connections for `keep`.
fn wire_keeping(keep: Duration) -> std::sync::Arc<Wire> {
    let dest = crate::upstream::Destinations::standard();
    Wire::keeping(crate::upstream::https_connector(Duration::from_secs(1), dest).unwrap(), keep)
}

/// A chunked coding of `body` in chunks of `size` bytes, with an extension and a trailer.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut w = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for c in body.chunks(size.max(1)) {
        w.extend_from_slice(format!("{:x};ext=1\r\n", c.len()).as_bytes());
        w.extend_from_slice(c);
        w.extend_from_slice(b"\r\n");
    }
    w.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n");
    w
}

#[test]
fn a_content_length_body_is_read_exactly_whatever_the_socket_hands_over() {
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut wire = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    wire.extend_from_slice(&body);
    for (chunk, slice) in [(1, 1), (7, 4096), (65536, 3), (4096, 65536)] {
        assert_eq!(run(&wire, chunk, slice).unwrap(), (200, body.clone()), "{chunk} {slice}");
    }
}

#[test]
fn a_chunked_body_drops_its_framing_extensions_and_trailers() {
    let body: Vec<u8> = (0..5_000u32).map(|i| (i % 13) as u8).collect();
    for (size, chunk) in [(1, 3), (100, 1), (4999, 64), (5000, 16384)] {
        assert_eq!(run(&chunked(&body, size), chunk, 777).unwrap(), (200, body.clone()), "{size} {chunk}");
    }
}

#[test]
fn an_answer_without_a_length_runs_to_the_end_of_the_connection() {
    let wire = b"HTTP/1.1 200 OK\r\n\r\nhello, world";
    assert_eq!(run(wire, 5, 4).unwrap(), (200, b"hello, world".to_vec()));
}

#[test]
fn an_interim_answer_is_skipped_for_the_one_that_follows() {
    let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 206 Partial Content\r\ncontent-length: 2\r\n\r\nok";
    assert_eq!(run(wire, 9, 64).unwrap(), (206, b"ok".to_vec()));
}

#[test]
fn a_short_or_broken_body_is_an_error_never_an_end() {
    let short = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345";
    assert!(run(short, 3, 64).unwrap_err().contains("5 bytes before"), "{:?}", run(short, 3, 64));
    let mut cut = chunked(b"0123456789", 4);
    cut.truncate(cut.len() - 10);
    assert!(run(&cut, 2, 64).is_err());
    let no_crlf = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n";
    assert!(run(no_crlf, 64, 64).unwrap_err().contains("CRLF"));
    let bad_size = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n";
    assert!(run(bad_size, 64, 64).unwrap_err().contains("chunk-size"));
    let overflow = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n100000000000000000\r\n";
    assert!(run(overflow, 64, 64).unwrap_err().contains("chunk-size"));
}

#[test]
fn malformed_or_oversized_heads_and_conflicting_lengths_are_refused() {
    let two = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd";
    assert!(run(two, 64, 64).unwrap_err().contains("conflicting"));
    let signed = b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\nabc";
    assert!(run(signed, 64, 64).unwrap_err().contains("Content-Length"));
    assert!(run(b"HTTX/1.1 200 OK\r\n\r\n", 64, 64).unwrap_err().contains("bad response head"));
    let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b"x-pad: 0123456789\r\n".as_slice(), 4000).flatten());
    assert!(run(&huge, 4096, 64).is_err());
    let mut endless_line = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;x=".to_vec();
    endless_line.extend(std::iter::repeat_n(b'a', 10_000));
    assert!(run(&endless_line, 4096, 64).unwrap_err().contains("too long"));
    // The same repeated value is one length, as RFC 9110 §8.6 allows.
    let same = b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\nabc";
    assert_eq!(run(same, 64, 64).unwrap(), (200, b"abc".to_vec()));
}

#[test]
fn nothing_from_the_origin_at_all_is_an_error() {
    assert!(run(b"", 64, 64).is_err());
    assert!(run(b"HTTP/1.1 200 OK\r\ncontent-le", 64, 64).unwrap_err().contains("inside the response head"));
}

impl super::Io for tokio::io::DuplexStream {}

#[test]
fn an_idle_connection_is_reused_while_fresh_and_closed_after_its_time_without_another_get() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        let wire = wire_keeping(Duration::from_millis(100));
        let (ours, mut theirs) = tokio::io::duplex(64);
        wire.put("http://o.test".into(), Box::new(ours));
        let again = wire.take("http://o.test").expect("a fresh connection is handed out again");
        assert!(wire.take("http://o.test").is_none() && wire.take("https://o.test").is_none());
        wire.put("http://o.test".into(), again);
        // The sweeper closes it once it expires: the origin's end reads the close.
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), theirs.read(&mut b)).await.unwrap().unwrap();
        assert_eq!(n, 0);
        assert!(wire.take("http://o.test").is_none());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!wire.sweeping.load(std::sync::atomic::Ordering::Acquire), "the sweeper ended with nothing idle");
    });
}

#[test]
fn only_an_answer_framed_one_way_and_read_to_its_end_leaves_its_connection_for_reuse() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        let wire = wire_keeping(Duration::from_secs(30));
        let cases: [(&[u8], bool); 5] = [
            (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", true),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc", false),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcEXTRA", false),
        ];
        for (i, (answer, kept)) in cases.into_iter().enumerate() {
            let conn = Box::new(Trickle { data: answer.to_vec(), at: 0, chunk: 4096 });
            let head = send(conn, b"GET / HTTP/1.1\r\n\r\n").await.ok().unwrap();
            let key = format!("http://o{i}.test");
            let mut body = wire.response(head, key.clone()).into_body();
            let mut b = [0u8; 16];
            assert_eq!(body.read(&mut b).await.unwrap(), 3);
            assert_eq!(&b[..3], b"abc");
            assert_eq!(body.read(&mut b).await.unwrap(), 0, "case {i}");
            assert_eq!(wire.take(&key).is_some(), kept, "case {i}");
        }
    });
}

proptest! {
    #[test]
    fn any_body_comes_out_whole_however_it_is_framed_and_split(
        body in proptest::collection::vec(any::<u8>(), 0..3000),
        size in 1usize..700,
        chunk in 1usize..5000,
        slice in 1usize..5000,
        coding in 0u8..3,
    ) {
        let wire = match coding {
            0 => {
                let mut w = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
                w.extend_from_slice(&body);
                w
            }
            1 => chunked(&body, size),
            _ => {
                let mut w = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
                w.extend_from_slice(&body);
                w
            }
        };
        prop_assert_eq!(run(&wire, chunk, slice).unwrap(), (200, body));
    }
}

/// Reads one request head from `s`; false if the connection ended first.
async fn read_request(s: &mut tokio::net::TcpStream) -> bool {
    let mut req = Vec::new();
    // Bounded by what the client sends: one byte per turn, or the end.
    while !req.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read(&mut b).await.unwrap_or(0) == 0 {
            return false;
        }
        req.push(b[0]);
    }
    true
}

/// An origin on loopback that answers each GET on one kept connection with the next of `bodies`,
/// written at once, and then waits for the next request.
async fn keep_alive_origin(bodies: Vec<Vec<u8>>) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        for body in bodies {
            if !read_request(&mut s).await {
                return;
            }
            s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes()).await.unwrap();
            s.write_all(&body).await.unwrap();
        }
        let _ = s.read(&mut [0u8; 1]).await;
    });
    (addr, task)
}

#[test]
fn a_body_read_with_a_receive_mark_leaves_its_connection_waking_at_once_for_the_next_answer() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let big: Vec<u8> = (0..(24u32 << 20)).map(|i| (i % 251) as u8).collect();
        let (addr, origin) = keep_alive_origin(vec![big.clone(), b"abc".to_vec()]).await;
        let wire = wire_keeping(Duration::from_secs(30));
        let get = || http::Request::get(format!("http://{addr}/o")).body(http_body_util::Empty::new()).unwrap();
        let mut body = wire.exchange(&get()).await.unwrap().into_body();
        let (mut got, mut dst, mut most) = (Vec::new(), vec![0u8; 1 << 20], 1);
        let read_all = async {
            loop {
                let n = body.read(&mut dst).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&dst[..n]);
                if let Some(fd) = body.conn.as_ref().and_then(|c| c.socket()) {
                    most = most.max(crate::gather::mark_of(fd));
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read_all).await.expect("the body's last bytes woke the reader");
        assert!(got == big, "the body came out whole");
        assert!(most > 1, "loopback is fast enough that a mark was set while the body arrived");
        // The same connection, kept: its next answer is 3 bytes, far under any mark.
        let next = tokio::time::timeout(Duration::from_secs(5), wire.exchange(&get()))
            .await
            .expect("the kept connection's next head woke its reader")
            .unwrap();
        let mut body = next.into_body();
        assert_eq!(crate::gather::mark_of(body.conn.as_ref().unwrap().socket().unwrap()), 1);
        let mut b = [0u8; 8];
        assert_eq!(body.read(&mut b).await.unwrap(), 3);
        drop(body);
        origin.abort();
    });
}

#[test]
fn bytes_queued_under_the_receive_mark_are_read_while_the_origin_pauses() {
    use tokio::io::AsyncWriteExt;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // 16 MiB at loopback speed sets a mark (up to 512 KiB). Once the reader has them all and waits on
        // the socket, 100 KiB, under any mark, and a pause until the reader has those too (at most 10 s);
        // then the rest. Without the guard the reader would sleep through the pause.
        const LEAD: usize = 16 << 20;
        const FIRST: usize = LEAD + (100 << 10);
        let body: Vec<u8> = (0..(24u32 << 20)).map(|i| (i % 251) as u8).collect();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tell, mut heard) = tokio::sync::mpsc::channel::<usize>(2);
        let sent = body.clone();
        let origin = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            assert!(read_request(&mut s).await, "a request head");
            s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", sent.len()).as_bytes()).await.unwrap();
            s.write_all(&sent[..LEAD]).await.unwrap();
            let lead = tokio::time::timeout(Duration::from_secs(10), heard.recv()).await;
            assert_eq!(lead, Ok(Some(LEAD)), "the reader had the lead");
            // Long enough for the reader to find the socket empty and wait on it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.write_all(&sent[LEAD..FIRST]).await.unwrap();
            let woken = tokio::time::timeout(Duration::from_secs(10), heard.recv()).await == Ok(Some(FIRST));
            s.write_all(&sent[FIRST..]).await.unwrap();
            woken
        });
        let wire = wire_keeping(Duration::from_secs(30));
        let given_up = crate::metrics::global().receive_marks_given_up.load(std::sync::atomic::Ordering::Relaxed);
        let req = http::Request::get(format!("http://{addr}/o")).body(http_body_util::Empty::new()).unwrap();
        let mut body_in = wire.exchange(&req).await.unwrap().into_body();
        let (mut got, mut dst, mut most) = (Vec::new(), vec![0u8; 1 << 20], 1);
        loop {
            // Reads stop at LEAD and FIRST, so the origin hears of each exactly there.
            let stop = if got.len() < LEAD {
                LEAD
            } else if got.len() < FIRST {
                FIRST
            } else {
                body.len()
            };
            let room = dst.len().min(stop - got.len()).max(1);
            let n =
                tokio::time::timeout(Duration::from_secs(20), body_in.read(&mut dst[..room])).await.unwrap().unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&dst[..n]);
            if let Some(fd) = body_in.conn.as_ref().and_then(|c| c.socket()) {
                most = most.max(crate::gather::mark_of(fd));
            }
            if got.len() == LEAD || got.len() == FIRST {
                let _ = tell.try_send(got.len());
            }
        }
        assert!(got == body, "the body came out whole");
        assert!(most > 1, "a mark was set while the lead arrived");
        assert!(origin.await.unwrap(), "the reader had the 100 KiB under the mark before the origin went on");
        let now = crate::metrics::global().receive_marks_given_up.load(std::sync::atomic::Ordering::Relaxed);
        assert!(now > given_up, "the mark given up is counted");
    });
}
