//! `builderos audit …`: verify a chain (from the database or an export file), query and
//! export through the API, and prune past retention.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use builderos_api::audit::StoredEvent;
use builderos_api::audit::verify::{DescendingVerifier, Report};
use builderos_shared::config::Config;
use clap::Subcommand;
use uuid::Uuid;

use crate::commands::CommandError;

/// Audit trail tools.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute an org's hash chain from the database (BR_OS_DB_URL), or check an export
    /// file offline (--file). Exits 1 when the chain is broken.
    Verify {
        /// The org whose chain to verify.
        #[arg(long, required_unless_present = "file")]
        org: Option<Uuid>,
        /// A JSON Lines export to verify offline instead.
        #[arg(long, conflicts_with = "org")]
        file: Option<PathBuf>,
        /// The file is a complete, unfiltered export: gaps are breaks.
        #[arg(long, requires = "file")]
        complete: bool,
        /// Print only the JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Query the trail through the API, newest first.
    Query {
        #[command(flatten)]
        api: ApiArgs,
        /// Compact query, e.g. `actor:alice@example.com action:deploy.* created:>=2026-01-01`.
        query: Vec<String>,
        /// Events per page (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Follow the cursor through every page.
        #[arg(long)]
        all: bool,
        /// Print JSON Lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Export the trail through the API to stdout (streamed).
    Export {
        #[command(flatten)]
        api: ApiArgs,
        /// Compact query selecting what to export (everything when empty).
        query: Vec<String>,
        /// `jsonl` or `csv`.
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
    /// Delete events older than each org's retention period, keeping the chain verifiable
    /// through an anchor. Runs as the schema owner (BR_OS_MIGRATE_DB_URL).
    Prune {
        /// Print only the JSON result.
        #[arg(long)]
        json: bool,
    },
}

/// Where the API is and who is asking.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The API's base URL.
    #[arg(long, env = "BR_OS_API_URL", default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// An access token or API token with read:audit / export:audit.
    #[arg(long, env = "BR_OS_API_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The org.
    #[arg(long)]
    pub org: Uuid,
}

/// Runs an audit subcommand; `Ok(false)` means "ran, but the answer is no" (a broken chain).
pub async fn run(config: &Config, command: AuditCommand) -> Result<bool, CommandError> {
    match command {
        AuditCommand::Verify {
            org: Some(org),
            json,
            ..
        } => {
            let url = config.require_db_url()?;
            let pool = builderos_shared::db::connect_lazy(url.expose(), 2)
                .map_err(CommandError::DatabaseUrl)?;
            let report = builderos_api::audit::store::verify_org(&pool, org)
                .await
                .map_err(|e| CommandError::Io(format!("database: {e}")))?;
            print_report(&report, json);
            Ok(report.ok)
        }
        AuditCommand::Verify {
            file: Some(file),
            complete,
            json,
            ..
        } => {
            let report = verify_file(&file, complete)?;
            print_report(&report, json);
            Ok(report.ok)
        }
        AuditCommand::Verify { .. } => Err(CommandError::Io("give --org or --file".into())),
        AuditCommand::Query {
            api,
            query,
            limit,
            all,
            json,
        } => {
            query_api(&api, &query.join(" "), limit, all, json).await?;
            Ok(true)
        }
        AuditCommand::Export { api, query, format } => {
            export_api(&api, &query.join(" "), &format).await?;
            Ok(true)
        }
        AuditCommand::Prune { json } => {
            let url = config.require_migrate_db_url()?;
            let pool = builderos_shared::db::connect_lazy(url.expose(), 2)
                .map_err(CommandError::DatabaseUrl)?;
            let pruned = builderos_api::audit::retention::prune_all(&pool, chrono::Utc::now())
                .await
                .map_err(|e| CommandError::Io(format!("pruning failed: {e}")))?;
            if json {
                println!("{}", serde_json::to_string(&pruned).unwrap_or_default());
            } else {
                for p in &pruned {
                    println!(
                        "org {}: pruned {} events (anchor seq {:?})",
                        p.org_id, p.pruned, p.anchor_seq
                    );
                }
                println!("{} orgs with a retention period", pruned.len());
            }
            Ok(true)
        }
    }
}

fn verify_file(path: &PathBuf, complete: bool) -> Result<Report, CommandError> {
    let file = std::fs::File::open(path)
        .map_err(|e| CommandError::Io(format!("{}: {e}", path.display())))?;
    let mut verifier = DescendingVerifier::new(complete);
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| CommandError::Io(format!("{}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: StoredEvent = serde_json::from_str(&line).map_err(|e| {
            CommandError::Io(format!(
                "{} line {}: not an exported audit event: {e}",
                path.display(),
                i + 1
            ))
        })?;
        verifier.push(&event);
    }
    Ok(verifier.finish())
}

fn print_report(report: &Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
        return;
    }
    if report.ok {
        println!(
            "chain intact: {} events checked{}",
            report.checked,
            if report.gaps > 0 {
                format!(", {} gaps (filtered export)", report.gaps)
            } else {
                String::new()
            }
        );
    } else {
        println!(
            "chain BROKEN at seq {}: {} events checked",
            report.first_broken_seq.unwrap_or_default(),
            report.checked
        );
        for p in &report.problems {
            println!("  seq {}: {:?}", p.seq, p.kind);
        }
    }
}

fn client() -> Result<reqwest::Client, CommandError> {
    reqwest::Client::builder()
        .build()
        .map_err(|e| CommandError::Io(format!("HTTP client: {e}")))
}

async fn api_error(res: reqwest::Response) -> CommandError {
    let status = res.status();
    let body = res.text().await.unwrap_or_default();
    CommandError::Io(format!("the API answered {status}: {body}"))
}

async fn query_api(
    api: &ApiArgs,
    q: &str,
    limit: i64,
    all: bool,
    json: bool,
) -> Result<(), CommandError> {
    let client = client()?;
    let mut cursor: Option<String> = None;
    let mut stdout = std::io::stdout().lock();
    loop {
        let mut params = vec![("q", q.to_owned()), ("limit", limit.to_string())];
        if let Some(c) = &cursor {
            params.push(("cursor", c.clone()));
        }
        let res = client
            .get(format!(
                "{}/v1/orgs/{}/audit/events",
                api.api.trim_end_matches('/'),
                api.org
            ))
            .bearer_auth(&api.token)
            .query(&params)
            .send()
            .await
            .map_err(|e| CommandError::Io(format!("calling the API: {e}")))?;
        if !res.status().is_success() {
            return Err(api_error(res).await);
        }
        let page: serde_json::Value = res
            .json()
            .await
            .map_err(|e| CommandError::Io(format!("reading the API's answer: {e}")))?;
        for e in page["events"].as_array().into_iter().flatten() {
            let line = if json {
                e.to_string()
            } else {
                format!(
                    "{:>6}  {}  {:<10} {:<28} {:<30} {}/{}",
                    e["seq"],
                    e["occurred_at"].as_str().unwrap_or(""),
                    e["outcome"].as_str().unwrap_or(""),
                    e["action"].as_str().unwrap_or(""),
                    e["actor_name"].as_str().unwrap_or("-"),
                    e["target_type"].as_str().unwrap_or("-"),
                    e["target_id"].as_str().unwrap_or("-"),
                )
            };
            writeln!(stdout, "{line}").map_err(|e| CommandError::Io(e.to_string()))?;
        }
        cursor = page["next_cursor"].as_str().map(ToOwned::to_owned);
        if !all || cursor.is_none() {
            if !json && let Some(c) = &cursor {
                eprintln!("more: --all, or pass cursor {c}");
            }
            return Ok(());
        }
    }
}

async fn export_api(api: &ApiArgs, q: &str, format: &str) -> Result<(), CommandError> {
    let mut res = client()?
        .get(format!(
            "{}/v1/orgs/{}/audit/export",
            api.api.trim_end_matches('/'),
            api.org
        ))
        .bearer_auth(&api.token)
        .query(&[("q", q), ("format", format)])
        .send()
        .await
        .map_err(|e| CommandError::Io(format!("calling the API: {e}")))?;
    if !res.status().is_success() {
        return Err(api_error(res).await);
    }
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| CommandError::Io(format!("reading the export: {e}")))?
    {
        stdout
            .write_all(&chunk)
            .map_err(|e| CommandError::Io(e.to_string()))?;
    }
    Ok(())
}
