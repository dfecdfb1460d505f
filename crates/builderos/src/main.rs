//! `builderos`: the one binary. `dev` runs everything on an embedded database; `serve`,
//! `operator` and `migrate` are the production commands; the rest are tools.

mod audit_cli;
mod commands;

use std::process::ExitCode;

use builderos_shared::config::Config;
use clap::{Parser, Subcommand};

/// BuilderOS team platform: multi-tenant server for agent pipelines.
///
/// Configuration comes from BR_OS_* environment variables; see the README's table.
#[derive(Debug, Parser)]
#[command(name = "builderos", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the API and the operator's control surface in one process. Without BR_OS_DB_URL,
    /// starts a private PostgreSQL cluster under BR_OS_DATA_DIR (default .builderos/).
    Dev,
    /// Serve the HTTP API on BR_OS_HTTP_ADDR (needs BR_OS_DB_URL).
    Serve,
    /// Run the pipeline operator and its control server on BR_OS_OPERATOR_ADDR (needs BR_OS_DB_URL).
    Operator,
    /// Apply pending database migrations as the schema owner (BR_OS_MIGRATE_DB_URL, else BR_OS_DB_URL).
    Migrate,
    /// Write the OpenAPI document generated from the code.
    Openapi {
        /// Where to write it; `-` for stdout.
        #[arg(long, default_value = "openapi/openapi.json")]
        out: String,
        /// Compare with the file instead of writing it; exit 1 when it differs.
        #[arg(long)]
        check: bool,
    },
    /// Signed packs: keygen, init, build, sign, verify, inspect (offline; no configuration needed).
    #[command(subcommand)]
    Pack(builderos_packs::cli::PackCommand),
    /// The audit trail: verify, query, export, prune.
    #[command(subcommand)]
    Audit(audit_cli::AuditCommand),
    /// Write the generated reference docs (docs/errors.md, docs/permissions.md) from the code.
    Docs {
        /// The docs directory.
        #[arg(long, default_value = "docs")]
        dir: String,
        /// Compare instead of writing; exit 1 when a file differs.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    builderos_shared::telemetry::install_crypto_provider();
    // Pack commands are offline tools: they need no server configuration.
    let command = match cli.command {
        Command::Pack(pack) => return builderos_packs::cli::run(pack),
        other => other,
    };
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("builderos: {e}");
            return ExitCode::from(2);
        }
    };
    builderos_shared::telemetry::init_logging(&config.log_filter, config.log_format);
    builderos_shared::telemetry::install_panic_hook();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("builderos: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Dev => commands::dev(&config).await.map(|()| true),
            Command::Serve => commands::serve(&config).await.map(|()| true),
            Command::Operator => commands::operator(&config).await.map(|()| true),
            Command::Migrate => commands::migrate(&config).await.map(|()| true),
            Command::Openapi { out, check } => commands::openapi(&out, check).map(|()| true),
            Command::Docs { dir, check } => commands::docs(&dir, check).map(|()| true),
            // `false`: the command ran and its answer is "no" (a broken chain).
            Command::Audit(command) => audit_cli::run(&config, command).await,
            Command::Pack(_) => Ok(true),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!(error = %e, "command failed");
            eprintln!("builderos: {e}");
            ExitCode::FAILURE
        }
    }
}
