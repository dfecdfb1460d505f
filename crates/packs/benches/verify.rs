//! Verification throughput and memory (a bench binary printing figures):
//! a 100 MB pack of many small files and a 100 MB pack of one large file, verified from disk;
//! MB/s, the ratio to this machine's raw SHA-256 throughput measured in the same run, and the
//! peak RSS of a fresh process that only verifies — as `verify` runs by default (large archives
//! read ahead by a second thread) and on one thread.
//!
//! Run: `cargo bench -p builderos-packs --bench verify`. With `PACKS_BENCH_DIR=<dir>` the packs
//! are kept there, and `<bench binary> --verify-one <pack>` verifies one (e.g. under `perf`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufReader, Write};
use std::path::Path;
use std::time::Instant;

use builderos_packs::build::{self, SOURCE_MANIFEST};
use builderos_packs::{Limits, TrustedKey, VerifyOptions, verify};
use sha2::{Digest, Sha256};

const TOTAL: usize = 100 << 20;

fn key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[3u8; 32])
}

/// Pseudo-random bytes: deflate can't shrink them, so the bench measures real work.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
}

fn make_source(dir: &Path, files: usize) {
    let per = TOTAL / files;
    let mut buf = vec![0u8; per];
    for i in 0..files {
        fill(&mut buf, i as u64 + 7);
        let path = dir.join(format!("data/{:03}/f{i:06}.bin", i % 500));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::File::create(path)
            .unwrap()
            .write_all(&buf)
            .unwrap();
    }
    let first = "data/000/f000000.bin";
    let src = serde_json::json!({"format": 1, "kind": "pipeline", "name": "bench", "version": "1.0.0", "publisher": "acme",
        "description": "benchmark", "permissions": {"tools": [], "network": [], "secrets": []}, "entry": {"pipelines": [first]}});
    std::fs::write(dir.join(SOURCE_MANIFEST), serde_json::to_vec(&src).unwrap()).unwrap();
}

fn build_pack(src: &Path, out: &Path) {
    let limits = Limits::default();
    let unsigned = out.with_extension("unsigned");
    build::build(
        src,
        std::io::BufWriter::new(std::fs::File::create(&unsigned).unwrap()),
        &limits,
    )
    .unwrap();
    build::sign(
        BufReader::new(std::fs::File::open(&unsigned).unwrap()),
        &key(),
        std::io::BufWriter::new(std::fs::File::create(out).unwrap()),
        &limits,
    )
    .unwrap();
    std::fs::remove_file(unsigned).unwrap();
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Child mode: verify one file (on one thread with `single`), print "seconds peak_kib".
fn child(path: &str, single: bool) {
    let trusted = TrustedKey::from_bytes(key().verifying_key().as_bytes()).unwrap();
    let mut options = VerifyOptions::default();
    if single {
        options.read_ahead_from = u64::MAX;
    }
    let t = Instant::now();
    let mut reader = std::fs::File::open(path).unwrap();
    verify(&mut reader, &[trusted], &options).unwrap();
    println!("{} {}", t.elapsed().as_secs_f64(), peak_rss_kib());
}

/// Verifies `pack` in a fresh process; its seconds and peak RSS in KiB.
fn verify_in_child(pack: &Path, flags: &[&str]) -> (f64, u64) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--verify-one", pack.to_str().unwrap()])
        .args(flags)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let secs = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    let kib = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (secs, kib)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--verify-one") {
        child(&args[i + 1], args.iter().any(|a| a == "--single-thread"));
        return;
    }
    // Raw SHA-256 on this machine, same run.
    let mut buf = vec![0u8; 64 << 20];
    fill(&mut buf, 1);
    let t = Instant::now();
    let mut sha = Sha256::new();
    for _ in 0..2 {
        sha.update(&buf);
    }
    std::hint::black_box(sha.finalize());
    let raw = (2 * buf.len()) as f64 / 1e6 / t.elapsed().as_secs_f64();
    drop(buf);

    // PACKS_BENCH_DIR keeps the packs (to profile `--verify-one` on them); a temporary
    // directory otherwise.
    let kept = std::env::var_os("PACKS_BENCH_DIR").map(std::path::PathBuf::from);
    let temp = tempfile::tempdir().unwrap();
    let dir = kept.as_deref().unwrap_or(temp.path());
    std::fs::create_dir_all(dir).unwrap();
    println!(
        "pack verification (100 MB of incompressible content, verified from disk by a fresh process)"
    );
    println!("  raw SHA-256 on this machine: {raw:.0} MB/s");
    for (name, files) in [
        ("many small files (12.8 KiB x 8,000)", 8_000),
        ("one large file (100 MiB)", 1),
    ] {
        let src = dir.join(format!("src-{files}"));
        make_source(&src, files);
        let pack = dir.join(format!("pack-{files}.zip"));
        build_pack(&src, &pack);
        let size = std::fs::metadata(&pack).unwrap().len();
        // Write back what building left dirty (200 MB of sources and pack), so the
        // measurement is verification, not the disk catching up in the background.
        std::process::Command::new("sync").status().unwrap();
        for (how, flags) in [
            ("read ahead (default)", &[][..]),
            ("one thread", &["--single-thread"][..]),
        ] {
            let (secs, kib) = verify_in_child(&pack, flags);
            let rate = TOTAL as f64 / 1e6 / secs;
            println!(
                "  {name:<36} {how:<20} pack {:>4} MB  {rate:>6.0} MB/s  ({:>3.0}% of raw SHA-256; target >= 70%)  peak RSS {:>5.1} MB (target <= 64 MB)",
                size / 1_000_000,
                100.0 * rate / raw,
                kib as f64 / 1024.0
            );
        }
    }
}
