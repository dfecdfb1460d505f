//! Shared test helpers: a raw zip writer that can produce every malformation, and valid
//! signed packs to start from.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use builderos_packs::TrustedKey;
use builderos_packs::manifest::{FileEntry, Kind, Manifest, Permissions};
use builderos_packs::sign;
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

/// One raw entry; every header field can be overridden.
#[derive(Clone)]
pub struct Raw {
    pub name: Vec<u8>,
    pub data: Vec<u8>,
    pub method: u16,
    pub flags: u16,
    pub made_by: u16,
    pub external: u32,
    pub declared_size: Option<u32>,
    pub crc: Option<u32>,
    pub local_name: Option<Vec<u8>>,
    pub local_crc: Option<u32>,
    pub extra: Vec<u8>,
    pub local_extra: Option<Vec<u8>>,
    pub comment: Vec<u8>,
}

impl Raw {
    pub fn stored(name: &str, data: &[u8]) -> Self {
        Self {
            name: name.as_bytes().to_vec(),
            data: data.to_vec(),
            method: 0,
            flags: 0,
            made_by: 3 << 8 | 20,
            external: 0o100_644 << 16,
            declared_size: None,
            crc: None,
            local_name: None,
            local_crc: None,
            extra: Vec::new(),
            local_extra: None,
            comment: Vec::new(),
        }
    }

    /// Builds `plain` deflated and then changes the compressed bytes.
    pub fn deflated_then(name: &str, plain: &[u8], change: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut r = Self::deflated(name, plain);
        change(&mut r.data);
        r
    }

    pub fn deflated(name: &str, plain: &[u8]) -> Self {
        use std::io::Write;
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(9));
        enc.write_all(plain).unwrap();
        let mut r = Self::stored(name, &enc.finish().unwrap());
        r.method = 8;
        r.declared_size = Some(u32::try_from(plain.len()).unwrap());
        r.crc = Some(crc32fast::hash(plain));
        r
    }
}

/// Writes entries, then the central directory, then the end record; `mutate_cd` may rewrite
/// the offsets of central directory entries (for overlap tests).
pub fn zip(entries: &[Raw], offsets_override: Option<Vec<u32>>, archive_comment: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offsets = Vec::new();
    for e in entries {
        offsets.push(u32::try_from(out.len()).unwrap());
        let crc = e.crc.unwrap_or_else(|| crc32fast::hash(&e.data));
        let size = e
            .declared_size
            .unwrap_or(u32::try_from(e.data.len()).unwrap());
        let name = e.local_name.clone().unwrap_or_else(|| e.name.clone());
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&e.flags.to_le_bytes());
        out.extend_from_slice(&e.method.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0x21, 0]);
        out.extend_from_slice(&e.local_crc.unwrap_or(crc).to_le_bytes());
        out.extend_from_slice(&u32::try_from(e.data.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&u16::try_from(name.len()).unwrap().to_le_bytes());
        let extra = e.local_extra.as_ref().unwrap_or(&e.extra);
        out.extend_from_slice(&u16::try_from(extra.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&name);
        out.extend_from_slice(extra);
        out.extend_from_slice(&e.data);
    }
    let offsets = offsets_override.unwrap_or(offsets);
    let cd_offset = u32::try_from(out.len()).unwrap();
    for (e, offset) in entries.iter().zip(&offsets) {
        let crc = e.crc.unwrap_or_else(|| crc32fast::hash(&e.data));
        let size = e
            .declared_size
            .unwrap_or(u32::try_from(e.data.len()).unwrap());
        out.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        out.extend_from_slice(&e.made_by.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&e.flags.to_le_bytes());
        out.extend_from_slice(&e.method.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0x21, 0]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&u32::try_from(e.data.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&u16::try_from(e.name.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&u16::try_from(e.extra.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&u16::try_from(e.comment.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&e.external.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&e.name);
        out.extend_from_slice(&e.extra);
        out.extend_from_slice(&e.comment);
    }
    let cd_size = u32::try_from(out.len()).unwrap() - cd_offset;
    let n = u16::try_from(entries.len()).unwrap();
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&u16::try_from(archive_comment.len()).unwrap().to_le_bytes());
    out.extend_from_slice(archive_comment);
    out
}

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn trusted(k: &SigningKey) -> TrustedKey {
    TrustedKey::from_bytes(k.verifying_key().as_bytes()).unwrap()
}

pub fn manifest(kind: Kind, files: &[(&str, &[u8])]) -> Manifest {
    let entry = match kind {
        Kind::Desk => {
            serde_json::json!({"templates": [files[0].0], "variables": [{"name": "project", "type": "string", "required": true}]})
        }
        Kind::Agent => {
            serde_json::json!({"agents": [{"role": "reviewer", "prompt": files[0].0}], "policies": {"tools": ["read_file"], "paths": {"allow": ["src/**"], "deny": []}, "network": ["api.example.com"]}})
        }
        Kind::Pipeline => serde_json::json!({"pipelines": [files[0].0]}),
    };
    let mut entries: Vec<FileEntry> = files
        .iter()
        .map(|(p, d)| FileEntry {
            path: (*p).to_owned(),
            size: d.len() as u64,
            sha256: hex::encode(Sha256::digest(d)),
        })
        .collect();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Manifest {
        format: 1,
        kind,
        name: "demo".into(),
        version: "1.0.0".into(),
        publisher: "acme".into(),
        description: "A demo pack.".into(),
        permissions: Permissions {
            tools: vec!["read_file".into()],
            network: vec!["api.example.com".into()],
            secrets: vec!["API_KEY".into()],
        },
        entry,
        files: entries,
    }
}

/// A signed pack's raw entries: pack.json, the files, pack.sig.
pub fn signed_entries(m: &Manifest, files: &[(&str, &[u8])], k: &SigningKey) -> Vec<Raw> {
    let bytes = m.to_canonical_bytes().unwrap();
    let mut entries = vec![Raw::stored("pack.json", &bytes)];
    for (p, d) in files {
        entries.push(Raw::deflated(p, d));
    }
    entries.push(Raw::stored("pack.sig", &sign::sign(k, &bytes).unwrap()));
    entries
}

pub const FILES: &[(&str, &[u8])] = &[
    ("prompts/reviewer.yaml", b"template: review {{diff}}\n"),
    ("docs/readme.md", b"# Demo\n"),
];

pub fn valid_pack(k: &SigningKey) -> Vec<u8> {
    zip(
        &signed_entries(&manifest(Kind::Agent, FILES), FILES, k),
        None,
        b"",
    )
}
