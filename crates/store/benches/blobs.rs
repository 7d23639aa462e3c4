//! Blob throughput, the local directory against an S3-compatible server on loopback: `put`
//! and `get` of small (4 KiB), medium (1 MiB) and large (16 MiB) blobs, one at a time.
//!
//! `cargo bench -p nightshift-store --bench blobs`. The S3 side is [`LoopbackS3`] (s3s over a
//! temporary directory, on its own two-thread runtime on the same machine), reached through the
//! real client: signed requests over HTTP/1.1 on 127.0.0.1. It measures what nightshift adds
//! per blob (signing, hashing the payload, HTTP, XML) plus a simple server's own work, not a
//! production object store. Each figure is the median of several rounds after a warm-up, with
//! the slowest and fastest round beside it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use nightshift_protocol::TaskId;
use nightshift_store::Blobs;
use nightshift_test_s3::LoopbackS3;

const ROUNDS: usize = 7;

/// (label, blob size, blobs per round).
const SIZES: [(&str, usize, usize); 3] = [
    ("4 KiB", 4 << 10, 200),
    ("1 MiB", 1 << 20, 32),
    ("16 MiB", 16 << 20, 4),
];

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "{:<7} {:<7} {:<5} {:>12} {:>24}",
            "where", "size", "op", "median", "range (min..max)"
        );
        let dir = tempfile::tempdir().unwrap();
        let local = Blobs::local(&dir.path().join("blobs")).unwrap();
        measure_all("local", &local).await;

        let s3 = LoopbackS3::start().unwrap();
        let remote = Blobs::from_url(&s3.url("bench"), s3.env()).unwrap();
        remote.check().await.unwrap();
        measure_all("s3", &remote).await;
    });
}

async fn measure_all(place: &str, blobs: &Blobs) {
    for (label, size, count) in SIZES {
        let payload = payload(size);
        let ids: Vec<TaskId> = (0..count).map(|_| TaskId::new()).collect();
        let puts = rounds(|| async {
            let started = Instant::now();
            for id in &ids {
                blobs.put(*id, "blob.bin", payload.clone()).await.unwrap();
            }
            started.elapsed()
        })
        .await;
        let gets = rounds(|| async {
            let started = Instant::now();
            for id in &ids {
                let read = blobs.get(*id, "blob.bin").await.unwrap().unwrap();
                assert_eq!(read.len(), size);
            }
            started.elapsed()
        })
        .await;
        report(place, label, "put", size, count, &puts);
        report(place, label, "get", size, count, &gets);
    }
}

/// Bytes that compress badly, so that nothing along the way gets an easy ride.
fn payload(size: usize) -> Bytes {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// A warm-up round, then [`ROUNDS`] timed rounds, sorted.
async fn rounds<F, Fut>(mut round: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Duration>,
{
    round().await;
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        times.push(round().await);
    }
    times.sort();
    times
}

/// Small blobs as operations per second, larger ones as MB/s (10^6 bytes), from the median
/// round and the slowest and fastest.
fn report(place: &str, label: &str, op: &str, size: usize, count: usize, times: &[Duration]) {
    let rate = |took: Duration| {
        let per_second = count as f64 / took.as_secs_f64();
        if size < 1 << 20 {
            per_second
        } else {
            per_second * size as f64 / 1e6
        }
    };
    let unit = if size < 1 << 20 { "/s" } else { " MB/s" };
    let median = rate(times[times.len() / 2]);
    let (slowest, fastest) = (rate(times[times.len() - 1]), rate(times[0]));
    println!(
        "{place:<7} {label:<7} {op:<5} {:>12} {:>24}",
        format!("{median:.0}{unit}"),
        format!("{slowest:.0}..{fastest:.0}{unit}")
    );
}
