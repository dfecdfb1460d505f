//! The publisher CLI: `builderos pack keygen | init | build | sign | verify | inspect`.
//!
//! Human output on stdout, diagnostics on stderr; with `--json`, stdout holds exactly one JSON
//! result (`{"ok":true,…}` or `{"ok":false,"error":{"code":"ERR_PACK_…","message":"…"}}`).
//! Exit code 0 on success, 1 on rejection or failure.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;

use crate::build::{self, SOURCE_MANIFEST};
use crate::error::PackError;
use crate::limits::Limits;
use crate::sign::{self, TrustedKey};
use crate::verify::{self, VerifyOptions};

/// The kinds `init` can scaffold.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    /// Desk templates.
    Desk,
    /// Agents.
    Agent,
    /// Pipelines.
    Pipeline,
}

/// `builderos pack …`
#[derive(Debug, clap::Subcommand)]
pub enum PackCommand {
    /// Generate an Ed25519 signing key: <OUT>.key (PKCS#8 PEM, mode 0600) and <OUT>.pub (SPKI PEM).
    Keygen {
        /// Path prefix of the key files.
        #[arg(long, default_value = "publisher")]
        out: PathBuf,
        /// Print only the JSON result.
        #[arg(long)]
        json: bool,
    },
    /// Create a skeleton source directory for a pack.
    Init {
        /// The directory to create.
        dir: PathBuf,
        /// What kind of pack.
        #[arg(long, value_enum)]
        kind: KindArg,
        /// The pack's name (a lowercase slug); defaults to the directory name.
        #[arg(long)]
        name: Option<String>,
        /// Your publisher id.
        #[arg(long, default_value = "my-publisher")]
        publisher: String,
        /// Print only the JSON result.
        #[arg(long)]
        json: bool,
    },
    /// Build an unsigned pack from a source directory (deterministic: same input, same bytes).
    Build {
        /// The source directory (with pack.src.json).
        dir: PathBuf,
        /// Output file (default <name>-<version>.unsigned.zip).
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Print only the JSON result.
        #[arg(long)]
        json: bool,
    },
    /// Sign an unsigned pack.
    Sign {
        /// The unsigned pack from `build`.
        file: PathBuf,
        /// The secret key file from `keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Output file (default <name>-<version>.pack.zip).
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Print only the JSON result.
        #[arg(long)]
        json: bool,
    },
    /// Verify a signed pack against trusted public keys; optionally unpack it.
    Verify {
        /// The pack.
        file: PathBuf,
        /// A trusted public key file (SPKI PEM); repeat for several.
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        /// Unpack into this new directory after verification.
        #[arg(long)]
        unpack: Option<PathBuf>,
        /// Print only the JSON result.
        #[arg(long)]
        json: bool,
    },
    /// Show a pack's manifest (structure checked; signature not required).
    Inspect {
        /// The pack.
        file: PathBuf,
        /// Print only the JSON result.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a pack command.
#[must_use]
pub fn run(command: PackCommand) -> ExitCode {
    let json = match &command {
        PackCommand::Keygen { json, .. }
        | PackCommand::Init { json, .. }
        | PackCommand::Build { json, .. }
        | PackCommand::Sign { json, .. }
        | PackCommand::Verify { json, .. }
        | PackCommand::Inspect { json, .. } => *json,
    };
    match execute(command) {
        Ok((human, value)) => {
            if json {
                let mut v = value;
                v["ok"] = json!(true);
                println!("{v}");
            } else {
                println!("{human}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    json!({"ok": false, "error": {"code": e.code(), "message": e.message()}})
                );
            } else {
                eprintln!("rejected: {}: {}", e.code(), e.message());
            }
            ExitCode::FAILURE
        }
    }
}

fn create_new(path: &Path, mode: u32) -> Result<File, PackError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| PackError::Io(format!("{}: {e}", path.display())))
}

fn open(path: &Path) -> Result<BufReader<File>, PackError> {
    let file = File::open(path).map_err(|e| PackError::Io(format!("{}: {e}", path.display())))?;
    if !file.metadata()?.is_file() {
        return Err(PackError::Io(format!("{} is not a file", path.display())));
    }
    Ok(BufReader::new(file))
}

/// `1 file`, `2 files`.
fn files(n: usize) -> String {
    if n == 1 {
        "1 file".to_owned()
    } else {
        format!("{n} files")
    }
}

fn execute(command: PackCommand) -> Result<(String, serde_json::Value), PackError> {
    let limits = Limits::default();
    match command {
        PackCommand::Keygen { out, .. } => {
            let key = sign::generate()?;
            let secret = out.with_extension("key");
            let public = out.with_extension("pub");
            create_new(&secret, 0o600)?.write_all(sign::secret_pem(&key)?.as_bytes())?;
            create_new(&public, 0o644)?
                .write_all(sign::public_pem(&key.verifying_key())?.as_bytes())?;
            let key_id = sign::key_id(&key.verifying_key());
            let public_b64 = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                key.verifying_key().as_bytes(),
            );
            Ok((
                format!(
                    "key id:     {key_id}\npublic key: {public_b64}\nsecret key: {} (keep it private)\npublic key: {}",
                    secret.display(),
                    public.display()
                ),
                json!({"key_id": key_id, "public_key": public_b64, "secret_key_file": secret, "public_key_file": public}),
            ))
        }
        PackCommand::Init {
            dir,
            kind,
            name,
            publisher,
            ..
        } => {
            let name = name.unwrap_or_else(|| {
                dir.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("my-pack")
                    .to_lowercase()
            });
            init(&dir, kind, &name, &publisher)?;
            Ok((
                format!(
                    "created {} (edit {SOURCE_MANIFEST}, then `builderos pack build {}`)",
                    dir.display(),
                    dir.display()
                ),
                json!({"dir": dir, "name": name}),
            ))
        }
        PackCommand::Build { dir, out, .. } => {
            let tmp = dir.with_extension("building.tmp");
            let manifest = {
                let file = create_new(&tmp, 0o644)?;
                let result = build::build(&dir, BufWriter::new(file), &limits);
                if result.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                result?
            };
            let out = out.unwrap_or_else(|| {
                PathBuf::from(format!(
                    "{}-{}.unsigned.zip",
                    manifest.name, manifest.version
                ))
            });
            std::fs::rename(&tmp, &out)
                .map_err(|e| PackError::Io(format!("{}: {e}", out.display())))?;
            Ok((
                format!(
                    "built {} ({} {} {}, {}, unsigned)",
                    out.display(),
                    kind_name(manifest.kind),
                    manifest.name,
                    manifest.version,
                    files(manifest.files.len())
                ),
                json!({"file": out, "name": manifest.name, "version": manifest.version, "files": manifest.files.len()}),
            ))
        }
        PackCommand::Sign { file, key, out, .. } => {
            let pem = std::fs::read_to_string(&key)
                .map_err(|e| PackError::Io(format!("{}: {e}", key.display())))?;
            let key = sign::read_secret_pem(&pem)?;
            let tmp = file.with_extension("signing.tmp");
            let manifest = {
                let out_file = create_new(&tmp, 0o644)?;
                let result = build::sign(open(&file)?, &key, BufWriter::new(out_file), &limits);
                if result.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                result?
            };
            let out = out.unwrap_or_else(|| {
                PathBuf::from(format!("{}-{}.pack.zip", manifest.name, manifest.version))
            });
            std::fs::rename(&tmp, &out)
                .map_err(|e| PackError::Io(format!("{}: {e}", out.display())))?;
            let key_id = sign::key_id(&key.verifying_key());
            Ok((
                format!("signed {} with {key_id}", out.display()),
                json!({"file": out, "key_id": key_id}),
            ))
        }
        PackCommand::Verify {
            file, key, unpack, ..
        } => {
            let mut keys = Vec::new();
            for path in &key {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| PackError::Io(format!("{}: {e}", path.display())))?;
                keys.push(TrustedKey::from_pem(&pem)?);
            }
            let mut reader = open(&file)?;
            let total = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            let bar = progress_bar(total);
            let pack = verify::verify_with_progress(
                &mut reader,
                &keys,
                &VerifyOptions {
                    limits,
                    ..VerifyOptions::default()
                },
                &mut |done| {
                    if let Some(bar) = &bar {
                        bar.set_position(done);
                    }
                },
            )?;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            if let Some(dest) = &unpack {
                crate::unpack::unpack(&mut reader, &pack, dest)?;
            }
            let m = &pack.manifest;
            Ok((
                format!(
                    "verified: {} {} {} by {} (key {}), {}{}",
                    kind_name(m.kind),
                    m.name,
                    m.version,
                    m.publisher,
                    pack.key_id,
                    files(m.files.len()),
                    unpack
                        .as_ref()
                        .map(|d| format!(", unpacked into {}", d.display()))
                        .unwrap_or_default()
                ),
                json!({"pack": {"kind": m.kind, "name": m.name, "version": m.version, "publisher": m.publisher, "key_id": pack.key_id,
                    "files": m.files.len(), "manifest_sha256": pack.manifest_sha256, "permissions": m.permissions}}),
            ))
        }
        PackCommand::Inspect { file, .. } => {
            let mut reader = open(&file)?;
            let entries = crate::archive::read_entries(&mut reader, &limits)?;
            let manifest_entry = entries
                .iter()
                .find(|e| e.name == "pack.json")
                .ok_or_else(|| PackError::ManifestMissing("no pack.json".into()))?;
            let mut bytes = Vec::new();
            verify::stream_entry(
                &mut reader,
                manifest_entry,
                crate::limits::MAX_MANIFEST_BYTES,
                &mut bytes,
            )?;
            let manifest = crate::manifest::Manifest::parse(&bytes)?;
            let signed = entries.iter().any(|e| e.name == "pack.sig");
            let human = format!(
                "{} {} {} by {}\n{}\npermissions: tools {:?}, network {:?}, secrets {:?}\nfiles:\n{}\nsigned: {signed} (not verified; use `pack verify`)",
                kind_name(manifest.kind),
                manifest.name,
                manifest.version,
                manifest.publisher,
                manifest.description,
                manifest.permissions.tools,
                manifest.permissions.network,
                manifest.permissions.secrets,
                manifest
                    .files
                    .iter()
                    .map(|f| format!("  {:>10}  {}  {}", f.size, &f.sha256[..12], f.path))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            Ok((human, json!({"manifest": manifest, "signed": signed})))
        }
    }
}

fn kind_name(kind: crate::manifest::Kind) -> &'static str {
    match kind {
        crate::manifest::Kind::Desk => "desk",
        crate::manifest::Kind::Agent => "agent",
        crate::manifest::Kind::Pipeline => "pipeline",
    }
}

fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    if total < 8 << 20 || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "verifying {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

fn write_file(path: &Path, text: &str) -> Result<(), PackError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    create_new(path, 0o644)?.write_all(text.as_bytes())?;
    Ok(())
}

fn init(dir: &Path, kind: KindArg, name: &str, publisher: &str) -> Result<(), PackError> {
    // The skeleton must build: refuse what its manifest would be refused for.
    for (what, value) in [("name", name), ("publisher", publisher)] {
        if !crate::manifest::is_slug(value) {
            return Err(PackError::ManifestInvalid(format!(
                "the {what} `{}` is not a lowercase slug (a-z, 0-9 and inner `-`, 1-64 characters){}",
                value.escape_debug(),
                if what == "name" { "; pass --name" } else { "" }
            )));
        }
    }
    if dir.exists() {
        return Err(PackError::Io(format!("{} already exists", dir.display())));
    }
    std::fs::create_dir_all(dir)?;
    let (kind_str, entry, files): (&str, serde_json::Value, Vec<(&str, &str)>) = match kind {
        KindArg::Desk => (
            "desk",
            json!({"templates": ["templates/README.md"], "variables": [{"name": "project_name", "type": "string", "required": true}]}),
            vec![(
                "templates/README.md",
                "# {{project_name}}\n\nCreated from a BuilderOS desk template.\n",
            )],
        ),
        KindArg::Agent => (
            "agent",
            json!({"agents": [{"role": "reviewer", "prompt": "prompts/reviewer.yaml"}],
                   "policies": {"tools": ["read_file"], "paths": {"allow": ["src/**"], "deny": [".env"]}, "network": []}}),
            vec![(
                "prompts/reviewer.yaml",
                "template: |\n  Review the change in {{diff}} and list risks.\nvariables:\n  diff: {type: string}\n",
            )],
        ),
        KindArg::Pipeline => (
            "pipeline",
            json!({"pipelines": ["pipelines/feature.yaml"]}),
            vec![(
                "pipelines/feature.yaml",
                "steps:\n  - id: plan\n    processor: builtin/echo\n  - id: test\n    processor: builtin/echo\n    depends_on: [plan]\n",
            )],
        ),
    };
    let tools: Vec<&str> = if matches!(kind, KindArg::Agent) {
        vec!["read_file"]
    } else {
        vec![]
    };
    let source = json!({
        "format": 1, "kind": kind_str, "name": name, "version": "0.1.0", "publisher": publisher,
        "description": format!("{} {kind_str} pack.", if kind_str == "agent" { "An" } else { "A" }),
        "permissions": {"tools": tools, "network": [], "secrets": []},
        "entry": entry,
    });
    write_file(
        &dir.join(SOURCE_MANIFEST),
        &(serde_json::to_string_pretty(&source).map_err(|e| PackError::Io(e.to_string()))? + "\n"),
    )?;
    for (path, text) in files {
        write_file(&dir.join(path), text)?;
    }
    Ok(())
}
