//! The subcommands' bodies.

use std::path::Path;
use std::sync::Arc;

use builderos_shared::config::{Config, ConfigError};
use builderos_shared::db::{self, MigrateError};
use builderos_shared::http;
use builderos_shared::pg::{self, Cluster, ClusterOptions, PgError};
use tokio::net::TcpListener;

/// Why a command failed; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error(transparent)]
    Schema(#[from] db::SchemaError),
    #[error("invalid database URL: {0}")]
    DatabaseUrl(sqlx::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Keys(#[from] builderos_api::auth::jwt::KeyError),
    #[error("{0}")]
    Mailer(#[from] builderos_api::mailer::MailerError),
    #[error("{0} is out of date; run `{1}` and commit the result")]
    Drift(String, &'static str),
}

/// Starts the outbox mailer in the background; cancel the token to stop it.
fn start_mailer(
    config: &Config,
    pool: &sqlx::PgPool,
) -> Result<tokio_util::sync::CancellationToken, CommandError> {
    let mailer = builderos_api::mailer::Mailer::new(
        config.smtp_url.as_ref().map(|u| u.expose()),
        &config.mail_from,
    )?;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(mailer.run(
        pool.clone(),
        std::time::Duration::from_secs(1),
        stop.clone(),
    ));
    Ok(stop)
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, CommandError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| CommandError::Bind { addr, source })
}

/// `builderos dev`: everything in one process, on the embedded cluster unless BR_OS_DB_URL is set.
pub async fn dev(config: &Config) -> Result<(), CommandError> {
    config.log_resolved("dev");
    let (cluster, app_url, owner_url) = match &config.db_url {
        Some(url) => {
            let owner = config.require_migrate_db_url()?.expose().to_owned();
            (None, url.expose().to_owned(), owner)
        }
        None => {
            let options = ClusterOptions::dev(&config.data_dir, config.pg_bindir.clone());
            let cluster = Arc::new(Cluster::start(options).await?);
            tracing::info!(port = cluster.port(), data_dir = %cluster.root().display(), "embedded PostgreSQL started");
            let app = cluster.app_url(pg::DATABASE);
            let owner = cluster.owner_url(pg::DATABASE);
            (Some(cluster), app, owner)
        }
    };
    let result = dev_serve(config, &app_url, &owner_url).await;
    if let Some(cluster) = cluster {
        cluster.stop_async().await;
        tracing::info!("embedded PostgreSQL stopped");
    }
    result
}

async fn dev_serve(config: &Config, app_url: &str, owner_url: &str) -> Result<(), CommandError> {
    db::migrate(owner_url).await?;
    let pool =
        db::connect_lazy(app_url, config.db_max_connections).map_err(CommandError::DatabaseUrl)?;
    let api = builderos_api::router(builderos_api::AppState::new(config, pool.clone())?);
    let operator =
        builderos_operator::router(builderos_operator::OperatorState::new(config, pool.clone()));
    let app = http::finish(
        api.nest("/operator", operator),
        builderos_api::SERVICE,
        config.body_limit_bytes,
    );
    let mailer = start_mailer(config, &pool)?;
    let worker = builderos_operator::runner::spawn_worker(
        config,
        app_url,
        builderos_operator::runner::worker_config(config),
    )
    .map_err(CommandError::DatabaseUrl)?;
    let listener = bind(config.http_addr).await?;
    let addr = listener.local_addr().map_err(CommandError::Serve)?;
    println!(
        "BuilderOS is running at http://{addr} (API docs: http://{addr}/docs; operator: http://{addr}/operator/health). Ctrl-C stops it."
    );
    let served = serve_until_signal(listener, app, pool, Some(mailer)).await;
    worker.stop().await;
    served
}

/// Serves until Ctrl-C/SIGTERM, then stops the mailer (if any) and closes the pool.
async fn serve_until_signal(
    listener: TcpListener,
    app: axum::Router,
    pool: sqlx::PgPool,
    mailer: Option<tokio_util::sync::CancellationToken>,
) -> Result<(), CommandError> {
    let served = http::serve(listener, app, http::shutdown_signal())
        .await
        .map_err(CommandError::Serve);
    if let Some(mailer) = mailer {
        mailer.cancel();
    }
    pool.close().await;
    served
}

/// The app role's pool from `BR_OS_DB_URL` (required by `serve` and `operator`).
fn app_pool(config: &Config) -> Result<sqlx::PgPool, CommandError> {
    let url = config.require_db_url()?;
    db::connect_lazy(url.expose(), config.db_max_connections).map_err(CommandError::DatabaseUrl)
}

/// Refuses to start against a schema this build can't use (a migration it needs is missing
/// or failed). Starts anyway, saying so, when the database can't be asked yet (the pool gives
/// up after its acquire timeout): the pool connects lazily and `/ready` reports the database.
async fn check_schema_at_start(pool: &sqlx::PgPool) -> Result<(), CommandError> {
    match db::check_schema(pool).await {
        Ok(db::Schema::Current) => Ok(()),
        Ok(db::Schema::Ahead { database, build }) => {
            tracing::warn!(
                database,
                build,
                "the database has migrations newer than this build (a newer build migrated it); running"
            );
            Ok(())
        }
        Err(db::SchemaError::Database(e)) => {
            tracing::warn!(error = %e, "cannot read the database's migrations at start; starting without checking them");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// `builderos serve`: the API.
pub async fn serve(config: &Config) -> Result<(), CommandError> {
    config.log_resolved("serve");
    let pool = app_pool(config)?;
    check_schema_at_start(&pool).await?;
    let app = builderos_api::app(
        builderos_api::AppState::new(config, pool.clone())?,
        config.body_limit_bytes,
    );
    let mailer = start_mailer(config, &pool)?;
    let listener = bind(config.http_addr).await?;
    tracing::info!(addr = %config.http_addr, "API listening");
    serve_until_signal(listener, app, pool, Some(mailer)).await
}

/// `builderos operator`: a worker running pipeline steps from the queue, and the operator's
/// control server. SIGTERM/Ctrl-C stops claiming, lets running steps finish within the grace
/// period and returns the rest to the queue.
pub async fn operator(config: &Config) -> Result<(), CommandError> {
    config.log_resolved("operator");
    let pool = app_pool(config)?;
    check_schema_at_start(&pool).await?;
    let url = config.require_db_url()?;
    let worker = builderos_operator::runner::spawn_worker(
        config,
        url.expose(),
        builderos_operator::runner::worker_config(config),
    )
    .map_err(CommandError::DatabaseUrl)?;
    let app = builderos_operator::app(
        builderos_operator::OperatorState::new(config, pool.clone()),
        config.body_limit_bytes,
    );
    let listener = bind(config.operator_addr).await?;
    tracing::info!(addr = %config.operator_addr, worker = %worker.worker, "operator listening and working");
    let served = serve_until_signal(listener, app, pool, None).await;
    worker.stop().await;
    served
}

/// `builderos migrate`.
pub async fn migrate(config: &Config) -> Result<(), CommandError> {
    config.log_resolved("migrate");
    let url = config.require_migrate_db_url()?;
    db::migrate(url.expose()).await?;
    tracing::info!("migrations applied");
    Ok(())
}

/// `builderos openapi`.
pub fn openapi(out: &str, check: bool) -> Result<(), CommandError> {
    write_or_check(
        Path::new(out),
        &builderos_api::openapi_json(),
        check,
        "builderos openapi",
    )
}

/// `builderos docs`: the reference pages generated from code.
pub fn docs(dir: &str, check: bool) -> Result<(), CommandError> {
    let pages = [
        ("errors.md", builderos_shared::error::render_markdown()),
        (
            "permissions.md",
            builderos_api::permissions::render_markdown(),
        ),
        ("pack-errors.md", builderos_packs::error::render_markdown()),
    ];
    for (name, text) in pages {
        write_or_check(&Path::new(dir).join(name), &text, check, "builderos docs")?;
    }
    Ok(())
}

fn write_or_check(
    path: &Path,
    text: &str,
    check: bool,
    fix: &'static str,
) -> Result<(), CommandError> {
    if path == Path::new("-") {
        print!("{text}");
        return Ok(());
    }
    if check {
        let current = std::fs::read_to_string(path).unwrap_or_default();
        return if current == text {
            Ok(())
        } else {
            Err(CommandError::Drift(path.display().to_string(), fix))
        };
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| CommandError::Io(format!("{}: {e}", parent.display())))?;
    }
    std::fs::write(path, text).map_err(|e| CommandError::Io(format!("{}: {e}", path.display())))?;
    println!("wrote {}", path.display());
    Ok(())
}
