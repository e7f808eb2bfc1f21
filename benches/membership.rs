//! What membership costs a connection: a loopback TCP connect (and close) alone, beside the same connect
//! followed by the membership handshake (two HMAC-SHA256 proofs, 73 + 33 + 40 bytes), in one run. Peer and
//! scheduler connections are long-lived and reused for every piece and request, so this is paid once per
//! parent–child pair and once per scheduler, never per piece.
//!
//! Run: `cargo bench --bench membership`.

use std::net::SocketAddr;
use std::time::Duration;

use criterion::Criterion;
use shoal::membership::{accept, connect, ClusterKey, Role};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &[u8] = b"bench-cluster-secret-0123456789abcdef0123";

/// A listener that accepts forever, running the handshake when `key` is set.
fn server(rt: &tokio::runtime::Runtime, key: Option<ClusterKey>) -> SocketAddr {
    let l = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = l.local_addr().expect("addr");
    rt.spawn(async move {
        // Ends with the runtime at the end of the bench.
        loop {
            let Ok((mut s, _)) = l.accept().await else { continue };
            let key = key.clone();
            tokio::spawn(async move {
                if let Some(k) = key {
                    let _ = accept(&mut s, &k, Role::Upload, Duration::from_secs(5)).await;
                }
                let mut b = [0u8; 1];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut b).await;
            });
        }
    });
    addr
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let key = ClusterKey::from_secret(SECRET).expect("key");
    let plain = server(&rt, None);
    let member = server(&rt, Some(key.clone()));
    let mut g = c.benchmark_group("connection");
    g.bench_function("tcp connect (baseline)", |b| {
        b.iter(|| rt.block_on(async { drop(TcpStream::connect(plain).await.expect("connect")) }))
    });
    g.bench_function("tcp connect + membership handshake", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut s = TcpStream::connect(member).await.expect("connect");
                connect(&mut s, &key, Role::Upload, Duration::from_secs(5)).await.expect("handshake");
            })
        })
    });
    g.finish();
}

criterion::criterion_group!(benches, bench);
criterion::criterion_main!(benches);
