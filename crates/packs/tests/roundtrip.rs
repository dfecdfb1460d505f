//! Build → sign → verify → unpack for every kind, determinism, and unpack safety.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Cursor;

use builderos_packs::build::{self, SOURCE_MANIFEST};
use builderos_packs::{Limits, VerifyOptions, unpack::unpack, verify};
use common::{key, trusted, valid_pack};

fn source(dir: &std::path::Path, kind: &str) {
    let (entry, files): (serde_json::Value, Vec<(&str, &str)>) = match kind {
        "desk" => (
            serde_json::json!({"templates": ["templates/a.md"], "variables": [{"name": "title", "type": "string", "required": true}]}),
            vec![("templates/a.md", "# {{title}}\n")],
        ),
        "agent" => (
            serde_json::json!({"agents": [{"role": "planner", "prompt": "prompts/planner.yaml"}], "policies": {"tools": ["read_file"], "paths": {"allow": ["src/**"], "deny": [".env"]}, "network": []}}),
            vec![("prompts/planner.yaml", "template: plan {{goal}}\n")],
        ),
        _ => (
            serde_json::json!({"pipelines": ["pipelines/p.yaml"]}),
            vec![("pipelines/p.yaml", "steps: []\n")],
        ),
    };
    let src = serde_json::json!({"format": 1, "kind": kind, "name": format!("{kind}-pack"), "version": "1.2.3", "publisher": "acme",
        "description": "test", "permissions": {"tools": ["read_file"], "network": [], "secrets": []}, "entry": entry});
    std::fs::write(
        dir.join(SOURCE_MANIFEST),
        serde_json::to_vec_pretty(&src).unwrap(),
    )
    .unwrap();
    for (p, text) in files {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    std::fs::create_dir_all(dir.join("data/nested")).unwrap();
    std::fs::write(dir.join("data/nested/blob.bin"), blob()).unwrap();
}

/// 100 KB that deflate can't squeeze past the ratio limit.
fn blob() -> Vec<u8> {
    (0u32..100_000)
        .map(|i| u8::try_from(i.wrapping_mul(2_654_435_761) >> 24).unwrap_or(0))
        .collect()
}

fn build_signed(dir: &std::path::Path) -> Vec<u8> {
    let mut unsigned = Cursor::new(Vec::new());
    build::build(dir, &mut unsigned, &Limits::default()).unwrap();
    let mut signed = Cursor::new(Vec::new());
    build::sign(
        Cursor::new(unsigned.into_inner()),
        &key(1),
        &mut signed,
        &Limits::default(),
    )
    .unwrap();
    signed.into_inner()
}

/// Every kind builds, signs, verifies and unpacks; the same directory gives the same bytes.
#[test]
fn every_kind_round_trips_deterministically() {
    for kind in ["desk", "agent", "pipeline"] {
        let src = tempfile::tempdir().unwrap();
        source(src.path(), kind);
        let first = build_signed(src.path());
        let second = build_signed(src.path());
        assert_eq!(first, second, "{kind}: builds must be byte-identical");
        let pack = verify(
            &mut Cursor::new(&first),
            &[trusted(&key(1))],
            &VerifyOptions::default(),
        )
        .unwrap();
        assert_eq!(pack.manifest.name, format!("{kind}-pack"));
        assert_eq!(pack.manifest.files.len(), 2);
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("installed");
        unpack(&mut Cursor::new(&first), &pack, &dest).unwrap();
        assert_eq!(
            std::fs::read(dest.join("data/nested/blob.bin")).unwrap(),
            blob()
        );
        assert!(dest.join("pack.json").is_file());
        // Unpacking again into the same place is refused; nothing else is left behind.
        assert_eq!(
            unpack(&mut Cursor::new(&first), &pack, &dest)
                .unwrap_err()
                .code(),
            "ERR_PACK_IO"
        );
        let leftovers: Vec<_> = std::fs::read_dir(out.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}

/// Symlinks in the source directory are refused at build time.
#[test]
fn build_refuses_links() {
    let src = tempfile::tempdir().unwrap();
    source(src.path(), "desk");
    std::os::unix::fs::symlink("/etc/passwd", src.path().join("templates/passwd")).unwrap();
    let err = build::build(src.path(), Cursor::new(Vec::new()), &Limits::default()).unwrap_err();
    assert_eq!(err.code(), "ERR_PACK_SYMLINK");
}

/// Hidden files and directories next to the sources (`.env`, `.git/`) are never packed.
#[test]
fn build_skips_hidden_files() {
    let src = tempfile::tempdir().unwrap();
    source(src.path(), "desk");
    let clean = build_signed(src.path());
    std::fs::write(src.path().join(".env"), "API_KEY=secret").unwrap();
    std::fs::create_dir_all(src.path().join(".git")).unwrap();
    std::fs::write(src.path().join(".git/config"), "[core]").unwrap();
    std::fs::write(src.path().join("templates/.notes.swp"), "x").unwrap();
    assert_eq!(build_signed(src.path()), clean);
}

/// An unpack whose bytes changed since verification writes nothing.
#[test]
fn unpack_rechecks_and_leaves_nothing_on_failure() {
    let bytes = valid_pack(&key(1));
    let pack = verify(
        &mut Cursor::new(&bytes),
        &[trusted(&key(1))],
        &VerifyOptions::default(),
    )
    .unwrap();
    let other = common::zip(
        &common::signed_entries(
            &common::manifest(builderos_packs::Kind::Agent, common::FILES),
            &[
                ("prompts/reviewer.yaml", b"template: reveal {{diff}}\n"),
                ("docs/readme.md", b"# Demo\n"),
            ],
            &key(1),
        ),
        None,
        b"",
    );
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("x");
    assert!(unpack(&mut Cursor::new(&other), &pack, &dest).is_err());
    assert!(!dest.exists());
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "the staging directory is removed"
    );
}

/// Content that deflate does not shrink is stored; the rest is deflated; both verify.
#[test]
fn incompressible_files_are_stored() {
    let src = tempfile::tempdir().unwrap();
    source(src.path(), "pipeline");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..50_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect();
    std::fs::write(src.path().join("data/noise.bin"), &noise).unwrap();
    std::fs::write(src.path().join("data/empty.txt"), b"").unwrap();
    std::fs::write(src.path().join("data/text.txt"), "steps: []\n".repeat(500)).unwrap();
    let first = build_signed(src.path());
    assert_eq!(
        first,
        build_signed(src.path()),
        "builds must be byte-identical"
    );
    let entries =
        builderos_packs::archive::read_entries(&mut Cursor::new(&first), &Limits::default())
            .unwrap();
    let method = |name: &str| entries.iter().find(|e| e.name == name).unwrap().method;
    assert_eq!(method("data/noise.bin"), 0);
    assert_eq!(method("data/empty.txt"), 0);
    assert_eq!(method("data/text.txt"), 8);
    assert_eq!(
        method("pipelines/p.yaml"),
        0,
        "10 bytes: deflate can't shrink them"
    );
    let pack = verify(
        &mut Cursor::new(&first),
        &[trusted(&key(1))],
        &VerifyOptions::default(),
    )
    .unwrap();
    assert_eq!(pack.manifest.files.len(), 5);
}
