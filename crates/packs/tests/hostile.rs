//! Hostile and broken archives, each built byte by byte, each rejected with its own code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Cursor;

use builderos_packs::manifest::Kind;
use builderos_packs::{Limits, TrustedKey, VerifyOptions, sign, verify};
use common::{FILES, Raw, key, manifest, signed_entries, trusted, valid_pack, zip};

fn code(bytes: &[u8]) -> &'static str {
    code_with(bytes, &VerifyOptions::default())
}

/// Every case goes through both ways of reading an archive (with and without the read-ahead
/// thread), which must agree.
fn code_with(bytes: &[u8], options: &VerifyOptions) -> &'static str {
    let k = key(1);
    let run = |read_ahead_from| {
        let options = VerifyOptions {
            read_ahead_from,
            ..options.clone()
        };
        match verify(&mut Cursor::new(bytes), &[trusted(&k)], &options) {
            Ok(_) => "OK",
            Err(e) => e.code(),
        }
    };
    let (direct, ahead) = (run(u64::MAX), run(0));
    assert_eq!(direct, ahead, "the read-ahead pass disagrees");
    direct
}

/// The baseline is valid, so every rejection below is caused by its one change.
#[test]
fn baseline_verifies() {
    assert_eq!(code(&valid_pack(&key(1))), "OK");
}

/// Hostile names.
#[test]
fn hostile_names() {
    let cases: &[(&[u8], &str)] = &[
        (b"../evil.sh", "ERR_PACK_PATH_TRAVERSAL"),
        (b"a/../../evil", "ERR_PACK_PATH_TRAVERSAL"),
        (b"./x", "ERR_PACK_PATH_TRAVERSAL"),
        (b"/etc/passwd", "ERR_PACK_ABSOLUTE_PATH"),
        (b"C:/Windows/evil.dll", "ERR_PACK_ABSOLUTE_PATH"),
        (b"c:evil", "ERR_PACK_ABSOLUTE_PATH"),
        (b"\\\\server\\share\\x", "ERR_PACK_BACKSLASH"),
        (b"dir\\..\\evil", "ERR_PACK_BACKSLASH"),
        (b"a\0b", "ERR_PACK_BAD_PATH"),
        (b"a//b", "ERR_PACK_BAD_PATH"),
        (b"\xff\xfe", "ERR_PACK_BAD_PATH"),
        (b"dir/", "ERR_PACK_NOT_REGULAR_FILE"),
    ];
    for (name, expected) in cases {
        let mut e = Raw::stored("x", b"data");
        e.name = name.to_vec();
        assert_eq!(
            code(&zip(&[e], None, b"")),
            *expected,
            "{}",
            String::from_utf8_lossy(name)
        );
    }
    let deep = format!("{}f", "d/".repeat(20));
    assert_eq!(
        code(&zip(&[Raw::stored(&deep, b"x")], None, b"")),
        "ERR_PACK_PATH_TOO_LONG"
    );
}

/// Links and every non-regular entry.
#[test]
fn non_regular_entries() {
    for (mode, expected) in [
        (0o120_777, "ERR_PACK_SYMLINK"),
        (0o040_755, "ERR_PACK_NOT_REGULAR_FILE"),
        (0o010_644, "ERR_PACK_NOT_REGULAR_FILE"),
        (0o020_644, "ERR_PACK_NOT_REGULAR_FILE"),
        (0o060_644, "ERR_PACK_NOT_REGULAR_FILE"),
        (0o140_644, "ERR_PACK_NOT_REGULAR_FILE"),
    ] {
        let mut e = Raw::stored("link", b"/etc/passwd");
        e.external = mode << 16;
        assert_eq!(code(&zip(&[e], None, b"")), expected, "{mode:o}");
    }
    let mut dos_dir = Raw::stored("folder", b"");
    dos_dir.made_by = 20;
    dos_dir.external = 0x10;
    assert_eq!(
        code(&zip(&[dos_dir], None, b"")),
        "ERR_PACK_NOT_REGULAR_FILE"
    );
}

/// Duplicates and names that collide on case-insensitive or normalising file systems.
#[test]
fn duplicates_and_collisions() {
    assert_eq!(
        code(&zip(
            &[Raw::stored("a.txt", b"1"), Raw::stored("a.txt", b"2")],
            None,
            b""
        )),
        "ERR_PACK_DUPLICATE_ENTRY"
    );
    assert_eq!(
        code(&zip(
            &[
                Raw::stored("README.md", b"1"),
                Raw::stored("readme.md", b"2")
            ],
            None,
            b""
        )),
        "ERR_PACK_NAME_COLLISION"
    );
    assert_eq!(
        code(&zip(
            &[
                Raw::stored("caf\u{e9}.txt", b"1"),
                Raw::stored("cafe\u{301}.txt", b"2")
            ],
            None,
            b""
        )),
        "ERR_PACK_NAME_COLLISION"
    );
    // A file that is also a directory, in either order and in any case.
    // And a directory spelled two ways (one directory on some file systems, two on others).
    for names in [
        ["x", "x/y"],
        ["X/y", "x"],
        ["a/b/c", "A/B"],
        ["Dir/a.txt", "dir/b.txt"],
        ["caf\u{e9}/a", "cafe\u{301}/b"],
    ] {
        let entries: Vec<Raw> = names.iter().map(|n| Raw::stored(n, b"1")).collect();
        assert_eq!(
            code(&zip(&entries, None, b"")),
            "ERR_PACK_NAME_COLLISION",
            "{names:?}"
        );
    }
}

/// Zip bombs: by ratio, by total size, by entry count, and a header that lies about the size.
#[test]
fn zip_bombs() {
    let zeros = vec![0u8; 4 << 20];
    assert_eq!(
        code(&zip(&[Raw::deflated("zeros.bin", &zeros)], None, b"")),
        "ERR_PACK_ZIP_BOMB"
    );
    let limits = Limits {
        max_uncompressed: 1000,
        max_ratio: 1_000_000,
        ..Limits::default()
    };
    let options = VerifyOptions {
        limits,
        ..VerifyOptions::default()
    };
    let a = Raw::deflated("a.bin", &vec![7u8; 600]);
    let b = Raw::deflated("b.bin", &vec![7u8; 600]);
    assert_eq!(
        code_with(&zip(&[a, b], None, b""), &options),
        "ERR_PACK_TOO_LARGE_UNCOMPRESSED"
    );
    let many: Vec<Raw> = (0..20)
        .map(|i| Raw::stored(&format!("f{i}"), b"x"))
        .collect();
    let options = VerifyOptions {
        limits: Limits {
            max_entries: 10,
            ..Limits::default()
        },
        ..VerifyOptions::default()
    };
    assert_eq!(
        code_with(&zip(&many, None, b""), &options),
        "ERR_PACK_TOO_MANY_ENTRIES"
    );
    let options = VerifyOptions {
        limits: Limits {
            max_entry: 100,
            ..Limits::default()
        },
        ..VerifyOptions::default()
    };
    assert_eq!(
        code_with(
            &zip(&[Raw::stored("big", &[1u8; 200])], None, b""),
            &options
        ),
        "ERR_PACK_ENTRY_TOO_LARGE"
    );
    let options = VerifyOptions {
        limits: Limits {
            max_compressed: 100,
            ..Limits::default()
        },
        ..VerifyOptions::default()
    };
    assert_eq!(
        code_with(&valid_pack(&key(1)), &options),
        "ERR_PACK_TOO_LARGE"
    );

    // Declares 10 bytes but inflates to 100 KB: caught while streaming, never trusted.
    let k = key(1);
    let mut entries = signed_entries(&manifest(Kind::Agent, FILES), FILES, &k);
    let mut liar = Raw::deflated("prompts/reviewer.yaml", &vec![b'a'; 100_000]);
    liar.declared_size = Some(u32::try_from(FILES[0].1.len()).unwrap());
    entries[1] = liar;
    let bytes = zip(&entries, None, b"");
    assert!(
        matches!(code(&bytes), "ERR_PACK_SIZE_MISMATCH" | "ERR_PACK_ZIP_BOMB"),
        "{}",
        code(&bytes)
    );

    // A nested archive is just bytes: never expanded.
    let inner = valid_pack(&key(2));
    let files: &[(&str, &[u8])] = &[("prompts/reviewer.yaml", b"x"), ("nested.zip", &inner)];
    let m = manifest(Kind::Agent, files);
    assert_eq!(code(&zip(&signed_entries(&m, files, &k), None, b"")), "OK");
}

/// Bytes that no manifest hash covers are refused wherever they hide: after a deflate stream's
/// end, in a stream that never ends, in extra fields (including a second, "Unicode" name that
/// other zip readers would extract under).
#[test]
fn unsigned_bytes_are_refused() {
    let k = key(1);
    let m = manifest(Kind::Agent, FILES);
    let with = |i: usize, raw: Raw| {
        let mut entries = signed_entries(&m, FILES, &k);
        entries[i] = raw;
        code(&zip(&entries, None, b""))
    };
    let (name, content) = FILES[0];
    assert_eq!(
        with(
            1,
            Raw::deflated_then(name, content, |d| d.extend_from_slice(b"hidden"))
        ),
        "ERR_PACK_CORRUPT",
        "bytes after the deflate stream's end"
    );
    let embedded = valid_pack(&key(2));
    assert_eq!(
        with(
            1,
            Raw::deflated_then(name, content, |d| d.extend_from_slice(&embedded))
        ),
        "ERR_PACK_CORRUPT",
        "a whole second pack after the deflate stream's end"
    );
    // A stream flushed but never finished (no final block).
    let mut never_ends = Raw::deflated(name, content);
    let mut sync = flate2::Compress::new(flate2::Compression::new(6), false);
    let mut data = Vec::with_capacity(content.len() + 64);
    sync.compress_vec(content, &mut data, flate2::FlushCompress::Sync)
        .unwrap();
    never_ends.data = data;
    assert_eq!(
        with(1, never_ends),
        "ERR_PACK_CORRUPT",
        "a stream that never ends"
    );

    let mut extra = Raw::deflated(name, content);
    extra.extra = [&0xcafe_u16.to_le_bytes()[..], &4u16.to_le_bytes(), b"data"].concat();
    assert_eq!(with(1, extra), "ERR_PACK_EXTRA_FIELD");
    let mut local_only = Raw::deflated(name, content);
    local_only.local_extra = Some([&0xcafe_u16.to_le_bytes()[..], &0u16.to_le_bytes()].concat());
    assert_eq!(
        with(1, local_only),
        "ERR_PACK_EXTRA_FIELD",
        "an extra field only in the local header"
    );
    // Info-ZIP Unicode Path: version 1, the CRC-32 of the header name, then another name.
    let mut unicode = Raw::deflated(name, content);
    let alias = b"../../escape.txt";
    let body = [
        &[1u8][..],
        &crc32fast::hash(name.as_bytes()).to_le_bytes(),
        alias,
    ]
    .concat();
    unicode.extra = [
        &0x7075_u16.to_le_bytes()[..],
        &u16::try_from(body.len()).unwrap().to_le_bytes(),
        &body,
    ]
    .concat();
    assert_eq!(
        with(1, unicode),
        "ERR_PACK_EXTRA_FIELD",
        "a second name for other readers"
    );
}

/// Trusted keys must be canonically encoded: a y coordinate written as p + 3 decodes to the
/// same point as 3 and would let two byte strings (and two key ids) name one key.
#[test]
fn non_canonical_public_keys_are_refused() {
    // p + k for p = 2^255 - 19: little-endian 0xed + k, then 0xff ... 0xff, 0x7f.
    for k in [3u8, 4, 18] {
        let mut bytes = [0xffu8; 32];
        bytes[0] = 0xed + k;
        bytes[31] = 0x7f;
        let err = TrustedKey::from_bytes(&bytes).map(|_| ()).unwrap_err();
        assert_eq!(err.code(), "ERR_PACK_WEAK_KEY", "p + {k}");
    }
    assert!(TrustedKey::from_bytes(key(1).verifying_key().as_bytes()).is_ok());
}

/// `pack.sig` has one byte form, like the manifest: the same signature pretty-printed, with
/// its keys unsorted or with a trailing newline is refused.
#[test]
fn non_canonical_signature_files_are_refused() {
    let k = key(1);
    let m = manifest(Kind::Agent, FILES);
    let canonical = sign::sign(&k, &m.to_canonical_bytes().unwrap()).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&canonical).unwrap();
    let unsorted = format!(
        "{{\"sig\":{},\"key_id\":{},\"alg\":\"ed25519\"}}",
        value["sig"], value["key_id"]
    );
    let mut newline = canonical.clone();
    newline.push(b'\n');
    for sig in [
        serde_json::to_vec_pretty(&value).unwrap(),
        unsorted.into_bytes(),
        newline,
    ] {
        let mut entries = signed_entries(&m, FILES, &k);
        let last = entries.len() - 1;
        entries[last] = Raw::stored("pack.sig", &sig);
        assert_eq!(
            code(&zip(&entries, None, b"")),
            "ERR_PACK_BAD_SIGNATURE",
            "{}",
            String::from_utf8_lossy(&sig)
        );
    }
}

/// A stored nested zip is content, even when its end record lies in the archive's last 64 KiB
/// where the outer end record is looked for.
#[test]
fn a_stored_nested_zip_at_the_end_is_content() {
    let k = key(1);
    let inner = valid_pack(&key(2));
    let files: &[(&str, &[u8])] = &[("prompts/reviewer.yaml", b"x"), ("zz/nested.zip", &inner)];
    let m = manifest(Kind::Agent, files);
    let mut entries = signed_entries(&m, files, &k);
    entries[2] = Raw::stored("zz/nested.zip", &inner);
    assert_eq!(code(&zip(&entries, None, b"")), "OK");
}

/// Structure: overlapping entries, header disagreement, prepended and trailing data, several
/// end records, comments, ZIP64 tricks.
#[test]
fn structural_tricks() {
    let a = Raw::stored("a.txt", b"aaaa");
    let b = Raw::stored("b.txt", b"bbbb");
    let bytes = zip(&[a.clone(), b.clone()], Some(vec![0, 0]), b"");
    assert_eq!(
        code(&bytes),
        "ERR_PACK_OVERLAPPING_ENTRIES",
        "two directory entries, one local header"
    );
    // `a` claims more compressed bytes than it has, reaching into `b`.
    let mut long_a = a.clone();
    long_a.data = b"aaaa".to_vec();
    let mut bytes = zip(&[long_a, b.clone()], None, b"");
    let local_b = 30 + 5 + 4;
    // Patch a's compressed and uncompressed sizes (local and central) to cover b's header.
    let cover = u32::try_from(4 + 10).unwrap();
    bytes[18..22].copy_from_slice(&cover.to_le_bytes());
    bytes[22..26].copy_from_slice(&cover.to_le_bytes());
    let cd = bytes.len() - 22 - (46 + 5) * 2;
    bytes[cd + 20..cd + 24].copy_from_slice(&cover.to_le_bytes());
    bytes[cd + 24..cd + 28].copy_from_slice(&cover.to_le_bytes());
    let c = code(&bytes);
    assert!(
        c == "ERR_PACK_OVERLAPPING_ENTRIES"
            || c == "ERR_PACK_CRC_MISMATCH"
            || c == "ERR_PACK_HEADER_MISMATCH",
        "{c} (b at {local_b})"
    );
    assert_eq!(c, "ERR_PACK_OVERLAPPING_ENTRIES");

    let mut local_differs = a.clone();
    local_differs.local_crc = Some(0xdead_beef);
    assert_eq!(
        code(&zip(&[local_differs], None, b"")),
        "ERR_PACK_HEADER_MISMATCH"
    );
    let mut local_name = a.clone();
    local_name.local_name = Some(b"z.txt".to_vec());
    assert_eq!(
        code(&zip(&[local_name], None, b"")),
        "ERR_PACK_HEADER_MISMATCH"
    );

    let valid = valid_pack(&key(1));
    let mut prepended = b"#!/bin/sh\necho polyglot\n".to_vec();
    prepended.extend_from_slice(&valid);
    assert_eq!(code(&prepended), "ERR_PACK_PREPENDED_DATA");
    let mut trailing = valid.clone();
    trailing.extend_from_slice(b"hidden payload");
    assert_eq!(code(&trailing), "ERR_PACK_TRAILING_DATA");
    assert_eq!(
        code(&zip(std::slice::from_ref(&a), None, b"a comment")),
        "ERR_PACK_ARCHIVE_COMMENT"
    );
    let mut entry_comment = a.clone();
    entry_comment.comment = b"hi".to_vec();
    assert_eq!(
        code(&zip(&[entry_comment], None, b"")),
        "ERR_PACK_ARCHIVE_COMMENT"
    );
    let mut two_eocd = valid.clone();
    let eocd = valid[valid.len() - 22..].to_vec();
    two_eocd.extend_from_slice(&eocd);
    assert_eq!(code(&two_eocd), "ERR_PACK_MULTIPLE_EOCD");
    let mut zip64 = a.clone();
    zip64.extra = vec![1, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(code(&zip(&[zip64], None, b"")), "ERR_PACK_ZIP64");
    let mut sentinel = a.clone();
    sentinel.declared_size = Some(0xFFFF_FFFF);
    assert_eq!(code(&zip(&[sentinel], None, b"")), "ERR_PACK_ZIP64");
    assert_eq!(
        code(b"not a zip at all, just text that is long enough"),
        "ERR_PACK_NOT_A_ZIP"
    );
    assert_eq!(code(b""), "ERR_PACK_NOT_A_ZIP");
}

/// Encryption, unsupported methods and data descriptors.
#[test]
fn encodings() {
    let mut encrypted = Raw::stored("a", b"x");
    encrypted.flags = 1;
    assert_eq!(code(&zip(&[encrypted], None, b"")), "ERR_PACK_ENCRYPTED");
    let mut bzip = Raw::stored("a", b"x");
    bzip.method = 12;
    assert_eq!(
        code(&zip(&[bzip], None, b"")),
        "ERR_PACK_UNSUPPORTED_COMPRESSION"
    );
    let mut descriptor = Raw::stored("a", b"x");
    descriptor.flags = 8;
    assert_eq!(
        code(&zip(&[descriptor], None, b"")),
        "ERR_PACK_DATA_DESCRIPTOR"
    );
    let mut garbage = Raw::deflated("a", b"hello");
    garbage.data = vec![0xff; 8];
    let k = key(1);
    let files: &[(&str, &[u8])] = &[("a", b"hello")];
    let mut entries = signed_entries(&manifest(Kind::Pipeline, files), files, &k);
    entries[1] = garbage;
    assert!(matches!(
        code(&zip(&entries, None, b"")),
        "ERR_PACK_CORRUPT" | "ERR_PACK_SIZE_MISMATCH"
    ));
}

/// Manifest and signature failures.
#[test]
fn manifest_and_signature() {
    let k = key(1);
    let m = manifest(Kind::Agent, FILES);
    // Missing pieces.
    let mut entries = signed_entries(&m, FILES, &k);
    entries.pop();
    assert_eq!(
        code(&zip(&entries, None, b"")),
        "ERR_PACK_SIGNATURE_MISSING"
    );
    let entries = signed_entries(&m, FILES, &k);
    assert_eq!(
        code(&zip(&entries[1..], None, b"")),
        "ERR_PACK_MANIFEST_MISSING"
    );
    // A file not in the manifest, and a listed file that is absent.
    let mut extra = signed_entries(&m, FILES, &k);
    extra.insert(1, Raw::stored("payload.sh", b"rm -rf /"));
    assert_eq!(
        code(&zip(&extra, None, b"")),
        "ERR_PACK_FILE_NOT_IN_MANIFEST"
    );
    let mut missing = signed_entries(&m, FILES, &k);
    missing.remove(1);
    assert_eq!(code(&zip(&missing, None, b"")), "ERR_PACK_FILE_MISSING");
    // Content swapped after signing: same size, different bytes.
    let mut swapped = signed_entries(&m, FILES, &k);
    swapped[1] = Raw::deflated("prompts/reviewer.yaml", b"template: reveal {{diff}}\n");
    assert_eq!(code(&zip(&swapped, None, b"")), "ERR_PACK_HASH_MISMATCH");
    let mut resized = signed_entries(&m, FILES, &k);
    resized[1] = Raw::deflated("prompts/reviewer.yaml", b"short");
    assert_eq!(code(&zip(&resized, None, b"")), "ERR_PACK_SIZE_MISMATCH");
    // Keys: unknown, revoked, a signature over another manifest, a forged signature.
    assert_eq!(code(&valid_pack(&key(9))), "ERR_PACK_UNKNOWN_KEY");
    let mut revoked = trusted(&k);
    revoked.revoked_at = Some(chrono::Utc::now() - chrono::Duration::days(1));
    assert_eq!(
        verify(
            &mut Cursor::new(valid_pack(&k)),
            &[revoked.clone()],
            &VerifyOptions::default()
        )
        .unwrap_err()
        .code(),
        "ERR_PACK_KEY_REVOKED"
    );
    // Verified as of before the revocation (a server re-checking an older upload), it passes.
    let before = VerifyOptions {
        at: chrono::Utc::now() - chrono::Duration::days(2),
        ..VerifyOptions::default()
    };
    assert!(verify(&mut Cursor::new(valid_pack(&k)), &[revoked], &before).is_ok());
    let mut other = m.clone();
    other.version = "9.9.9".into();
    let mut replayed = signed_entries(&m, FILES, &k);
    let last = replayed.len() - 1;
    replayed[last] = Raw::stored(
        "pack.sig",
        &sign::sign(&k, &other.to_canonical_bytes().unwrap()).unwrap(),
    );
    assert_eq!(code(&zip(&replayed, None, b"")), "ERR_PACK_BAD_SIGNATURE");
    let mut forged = signed_entries(&m, FILES, &k);
    let sig = serde_json::json!({"alg": "ed25519", "key_id": sign::key_id(&k.verifying_key()), "sig": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0u8; 64])});
    forged[last] = Raw::stored("pack.sig", sig.to_string().as_bytes());
    assert_eq!(code(&zip(&forged, None, b"")), "ERR_PACK_BAD_SIGNATURE");
    // Publisher bound to the key.
    let mut bound = trusted(&k);
    bound.publisher = Some("someone-else".into());
    assert_eq!(
        verify(
            &mut Cursor::new(valid_pack(&k)),
            &[bound],
            &VerifyOptions::default()
        )
        .unwrap_err()
        .code(),
        "ERR_PACK_PUBLISHER_MISMATCH"
    );
    // Weak keys are refused up front.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert_eq!(
        builderos_packs::TrustedKey::from_bytes(&identity)
            .unwrap_err()
            .code(),
        "ERR_PACK_WEAK_KEY"
    );
}

/// Non-canonical and invalid manifests, even when correctly signed.
#[test]
fn manifest_schema() {
    let k = key(1);
    let sign_raw = |manifest_bytes: &[u8], files: &[(&str, &[u8])]| {
        let mut entries = vec![Raw::stored("pack.json", manifest_bytes)];
        for (p, d) in files {
            entries.push(Raw::deflated(p, d));
        }
        entries.push(Raw::stored(
            "pack.sig",
            &sign::sign(&k, manifest_bytes).unwrap(),
        ));
        zip(&entries, None, b"")
    };
    let m = manifest(Kind::Agent, FILES);
    let pretty = serde_json::to_vec_pretty(&m).unwrap();
    assert_eq!(
        code(&sign_raw(&pretty, FILES)),
        "ERR_PACK_NON_CANONICAL_MANIFEST"
    );
    let mut v = serde_json::to_value(&m).unwrap();
    v["surprise"] = serde_json::json!(true);
    assert_eq!(
        code(&sign_raw(
            &builderos_canon::value_to_canonical_bytes(&v),
            FILES
        )),
        "ERR_PACK_MANIFEST_INVALID"
    );
    let mut v = serde_json::to_value(&m).unwrap();
    v["kind"] = serde_json::json!("rootkit");
    assert_eq!(
        code(&sign_raw(
            &builderos_canon::value_to_canonical_bytes(&v),
            FILES
        )),
        "ERR_PACK_MANIFEST_INVALID"
    );
    for (field, value) in [
        ("entry", serde_json::json!({"agents": []})),
        (
            "entry",
            serde_json::json!({"agents": [{"role": "r", "prompt": "nope.yaml"}], "policies": {"tools": [], "paths": {"allow": [], "deny": []}, "network": []}}),
        ),
        ("entry", serde_json::json!({"pipelines": ["x"]})),
        ("name", serde_json::json!("Not A Slug")),
        ("version", serde_json::json!("1.0")),
        ("format", serde_json::json!(2)),
    ] {
        let mut v = serde_json::to_value(&m).unwrap();
        v[field] = value.clone();
        assert_eq!(
            code(&sign_raw(
                &builderos_canon::value_to_canonical_bytes(&v),
                FILES
            )),
            "ERR_PACK_MANIFEST_INVALID",
            "{field}: {value}"
        );
    }
}
