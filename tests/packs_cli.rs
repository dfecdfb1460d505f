//! The publisher CLI as a publisher uses it: keygen, init, build, sign, verify (and unpack)
//! for each kind; rebuilding gives identical bytes; rejected packs exit non-zero with a code.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_builderos");

fn pack(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("pack")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run builderos");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The walkthrough of docs/pack-format.md works for every kind, deterministically.
#[test]
fn walkthrough_for_every_kind() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let (ok, out, err) = pack(d, &["keygen", "--out", "acme", "--json"]);
    assert!(ok, "{err}");
    let keygen: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON result");
    assert!(
        keygen["key_id"]
            .as_str()
            .expect("key id")
            .starts_with("ed25519:")
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.join("acme.key"))
            .expect("key")
            .permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        !pack(d, &["keygen", "--out", "acme"]).0,
        "never overwrites a key"
    );

    for kind in ["desk", "agent", "pipeline"] {
        let src = format!("my-{kind}");
        assert!(pack(d, &["init", &src, "--kind", kind, "--publisher", "acme"]).0);
        let (ok, _, err) = pack(d, &["build", &src, "-o", "unsigned.zip"]);
        assert!(ok, "{kind}: {err}");
        let (ok, _, err) = pack(d, &["build", &src, "-o", "again.zip"]);
        assert!(ok, "{err}");
        assert_eq!(
            std::fs::read(d.join("unsigned.zip")).expect("a"),
            std::fs::read(d.join("again.zip")).expect("b"),
            "{kind}: deterministic build"
        );
        let signed = format!("{kind}.pack.zip");
        let (ok, _, err) = pack(
            d,
            &["sign", "unsigned.zip", "--key", "acme.key", "-o", &signed],
        );
        assert!(ok, "{kind}: {err}");
        let (ok, out, err) = pack(
            d,
            &[
                "verify",
                &signed,
                "--key",
                "acme.pub",
                "--json",
                "--unpack",
                &format!("installed-{kind}"),
            ],
        );
        assert!(ok, "{kind}: {out} {err}");
        let result: serde_json::Value =
            serde_json::from_str(out.trim()).expect("only the JSON result on stdout");
        assert_eq!(result["ok"], true);
        assert_eq!(result["pack"]["kind"], kind);
        assert!(d.join(format!("installed-{kind}/pack.json")).is_file());
        let (ok, out, _) = pack(d, &["inspect", &signed]);
        assert!(ok && out.contains(&format!("my-{kind}")), "{out}");
        std::fs::remove_file(d.join("unsigned.zip")).expect("rm");
        std::fs::remove_file(d.join("again.zip")).expect("rm");
    }

    // Another key, a tampered pack, garbage: non-zero exit with a code, in JSON and in text.
    assert!(pack(d, &["keygen", "--out", "other"]).0);
    let (ok, out, _) = pack(
        d,
        &["verify", "agent.pack.zip", "--key", "other.pub", "--json"],
    );
    assert!(!ok);
    let result: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(result["error"]["code"], "ERR_PACK_UNKNOWN_KEY");
    let mut bytes = std::fs::read(d.join("agent.pack.zip")).expect("read");
    bytes.extend_from_slice(b"appended");
    std::fs::write(d.join("tampered.zip"), bytes).expect("write");
    let (ok, _, err) = pack(d, &["verify", "tampered.zip", "--key", "acme.pub"]);
    assert!(!ok && err.contains("ERR_PACK_TRAILING_DATA"), "{err}");
    std::fs::write(d.join("garbage.zip"), b"PK\x03\x04 definitely not a zip").expect("write");
    let (ok, _, err) = pack(d, &["verify", "garbage.zip", "--key", "acme.pub"]);
    assert!(!ok && err.contains("ERR_PACK_"), "{err}");
    // A directory is not a pack, and a secret key is not a trusted key: both say so.
    let (ok, _, err) = pack(d, &["verify", ".", "--key", "acme.pub"]);
    assert!(
        !ok && err.contains("ERR_PACK_IO") && err.contains("not a file"),
        "{err}"
    );
    let (ok, _, err) = pack(d, &["verify", "agent.pack.zip", "--key", "acme.key"]);
    assert!(!ok && err.contains("secret key"), "{err}");
    // A skeleton that could not build is refused up front, and nothing is created.
    for args in [
        &["init", "Bad_Name", "--kind", "desk"][..],
        &[
            "init",
            "ok-name",
            "--kind",
            "desk",
            "--publisher",
            "ACME Corp",
        ][..],
    ] {
        let (ok, _, err) = pack(d, args);
        assert!(!ok && err.contains("ERR_PACK_MANIFEST_INVALID"), "{err}");
        assert!(!d.join(args[1]).exists());
    }
}
