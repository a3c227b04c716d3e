//! Append latency on a compacted partition while the cleaner rewrites it, against the same
//! appends with no compaction running, measured back to back in one run (the ratio is what
//! counts on a noisy machine). Prints p50 / p99 / max per case.
//!
//! `cargo bench -p quiver-broker --bench compaction_latency`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_broker::{Ack, CleanupPolicy, EnvelopeBuilder, Log, LogConfig, ProducerInfo, now_ms};

const KEYS: usize = 50_000;
const VALUE_BYTES: usize = 1_000;
/// Appends measured with no compaction; each is one 10-record batch with acks=1. While
/// compacting, appends run for as long as the pass does.
const APPENDS: usize = 3_000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 8 << 20,
        cleanup_policy: CleanupPolicy {
            compact: true,
            delete: false,
        },
        flush_on_ack: false,
        ..LogConfig::default()
    }
}

fn batch(first_key: usize, n: usize) -> arrow::record_batch::RecordBatch {
    let value = vec![b'v'; VALUE_BYTES];
    let mut b = EnvelopeBuilder::default();
    let now = now_ms();
    for i in 0..n {
        let key = format!("key-{}", (first_key + i) % KEYS);
        b.append(now, Some(key.as_bytes()), Some(&value), &[]);
    }
    b.finish()
}

/// A log holding every key 4 times over closed segments (about 200 MB), ready to compact.
fn filled(dir: &Path) -> Arc<Log> {
    let log = Log::open(dir, "bench", 0, Arc::new(config())).expect("open");
    for round in 0..4 {
        for chunk in (0..KEYS).step_by(100) {
            log.append_unflushed(&batch(round * 7 + chunk, 100), ProducerInfo::NONE)
                .expect("append");
        }
    }
    Arc::new(log)
}

/// Appends batches one after another while `more(appends so far)`; returns each one's latency.
async fn timed_appends(log: &Log, more: impl Fn(usize) -> bool) -> Vec<Duration> {
    let mut out = Vec::with_capacity(APPENDS);
    for i in 0.. {
        if !more(i) {
            break;
        }
        let b = batch(i * 10, 10);
        let t = Instant::now();
        log.append(&b, ProducerInfo::NONE, Ack::Written)
            .await
            .expect("append");
        out.push(t.elapsed());
        // Producers do not append back to back; leave the runtime room as a real one would.
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    out
}

fn summary(mut lat: Vec<Duration>) -> (f64, f64, f64) {
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    (at(0.5), at(0.99), at(1.0))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let idle_dir = tempfile::tempdir().expect("tempdir");
        let idle = filled(idle_dir.path());
        let quiet = summary(timed_appends(&idle, |i| i < APPENDS).await);

        let busy_dir = tempfile::tempdir().expect("tempdir");
        let busy = filled(busy_dir.path());
        let cleaner = {
            let log = busy.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let stats = log
                    .compact_until(i64::MAX / 2, None)
                    .await
                    .expect("compact");
                (stats, t.elapsed())
            })
        };
        let during = summary(timed_appends(&busy, |i| i < 100 || !cleaner.is_finished()).await);
        let (stats, took) = cleaner.await.expect("cleaner task");
        println!("append latency, 10 x {VALUE_BYTES} B per append, acks=1");
        println!(
            "{:<32} {:>9} {:>9} {:>9}",
            "case", "p50 ms", "p99 ms", "max ms"
        );
        for (name, (p50, p99, max)) in [("no compaction", quiet), ("while compacting", during)] {
            println!("{name:<32} {p50:>9.3} {p99:>9.3} {max:>9.3}");
        }
        println!(
            "compaction: {} segments, {} MB -> {} MB in {:.2} s; p99 ratio {:.2}",
            stats.segments_cleaned,
            stats.bytes_before / 1_000_000,
            stats.bytes_after / 1_000_000,
            took.as_secs_f64(),
            during.1 / quiet.1
        );
    });
}
