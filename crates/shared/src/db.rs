//! Database set-up: the app's pool, migrations, and the readiness probe.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::pg::APP_GROUP_ROLE;

/// The NOLOGIN role whose members may prune audit events (the schema owner is one).
pub const MAINTENANCE_ROLE: &str = "builderos_maintenance";

/// The migrations under `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// How long a request waits for a pooled connection before answering 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens the app's pool lazily: the process starts (and `/health` answers) even while the
/// database is down; `/ready` and requests report it.
///
/// # Errors
/// When `url` is not a valid PostgreSQL URL.
pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let options = options.application_name("builderos");
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(Some(Duration::from_secs(300)))
        .test_before_acquire(true)
        .connect_lazy_with(options))
}

/// Runs the pending migrations as the schema owner.
///
/// The NOLOGIN group role `builderos_app` that the migrations grant privileges to must exist;
/// it is created here when the owner may create roles, otherwise the error says so.
///
/// # Errors
/// Connection failures, a missing app role the owner cannot create, or a failing migration.
pub async fn migrate(owner_url: &str) -> Result<(), MigrateError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(owner_url)
        .await?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1")
        .bind(APP_GROUP_ROLE)
        .fetch_optional(&pool)
        .await?;
    if exists.is_none() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {APP_GROUP_ROLE} NOLOGIN"
        )))
        .execute(&pool)
        .await
        .map_err(|e| MigrateError::AppRole(e.to_string()))?;
    }
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Where a database's schema stands against this build's migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Every migration of this build is applied, and nothing newer.
    Current,
    /// Newer migrations are applied too (a newer build migrated it — a rolling deploy); this
    /// build runs, since migrations only expand what older code uses (migrations/README.md).
    Ahead {
        /// The newest migration the database has.
        database: i64,
        /// The newest migration of this build.
        build: i64,
    },
}

/// Why a database's schema can't serve this build.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// Migrations of this build are missing.
    #[error(
        "the database schema is at migration {database} but this build needs migration {build}: run `builderos migrate` first"
    )]
    Behind {
        /// The newest migration the database has (0: none).
        database: i64,
        /// The newest migration of this build.
        build: i64,
    },
    /// A migration failed part-way.
    #[error("migration {0} failed part-way in this database: fix it, then run `builderos migrate`")]
    Failed(i64),
    /// The database could not be asked.
    #[error("cannot read the database's migrations: {0}")]
    Database(#[from] sqlx::Error),
}

/// Compares the migrations `pool`'s database has applied with this build's.
///
/// # Errors
/// [`SchemaError::Behind`] when a migration of this build is missing (also when the database
/// has none, or the app role can't read the history, which migration 0019 grants it),
/// [`SchemaError::Failed`] when one failed part-way, [`SchemaError::Database`] when the
/// database could not be asked.
pub async fn check_schema(pool: &PgPool) -> Result<Schema, SchemaError> {
    let build = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let history: Result<(Option<i64>, Option<i64>), sqlx::Error> = sqlx::query_as(
        "SELECT max(version) FILTER (WHERE success), min(version) FILTER (WHERE NOT success) \
           FROM _sqlx_migrations",
    )
    .fetch_one(pool)
    .await;
    let (applied, failed) = match history {
        Ok(row) => row,
        // No history (never migrated), or none this role may read (migrated before 0019).
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P01" | "42501")) => {
            (None, None)
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(version) = failed {
        return Err(SchemaError::Failed(version));
    }
    let database = applied.unwrap_or(0);
    match database.cmp(&build) {
        std::cmp::Ordering::Less => Err(SchemaError::Behind { database, build }),
        std::cmp::Ordering::Equal => Ok(Schema::Current),
        std::cmp::Ordering::Greater => Ok(Schema::Ahead { database, build }),
    }
}

/// Why `migrate` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// Connecting or querying failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The group role is missing and could not be created.
    #[error(
        "the roles `builderos_app` / `builderos_maintenance` do not exist and could not be created ({0}); \
         create them once as a superuser (CREATE ROLE builderos_app NOLOGIN; CREATE ROLE builderos_maintenance NOLOGIN; \
         GRANT builderos_maintenance TO <owner>) and grant builderos_app to the app's login role"
    )]
    AppRole(String),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// One database round-trip, bounded by `timeout`. Used by `/ready`.
pub async fn ping(pool: &PgPool, timeout: Duration) -> bool {
    let probe = async {
        let mut conn = pool.acquire().await?;
        sqlx::query("SELECT 1").execute(&mut *conn).await
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Ok(_)))
}

/// True for errors that mean "the database can't be reached right now" (→ 503), as opposed
/// to a bad query (→ 500).
#[must_use]
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
            matches!(
                db.code().as_deref(),
                Some("57P01" | "57P02" | "57P03" | "53300")
            )
        }
        _ => false,
    }
}

/// What a transaction may see under row-level security: the policies read these
/// transaction-local settings, and a setting left unset matches no row.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `app.org_id`: the org the transaction acts in.
    pub org: Option<uuid::Uuid>,
    /// `app.user_id`: the signed-in user (their own memberships are visible).
    pub user: Option<uuid::Uuid>,
    /// `app.token_hash`: the hash of a presented secret (its one row is visible).
    pub token_hash: Option<String>,
}

impl Scope {
    /// A transaction acting inside `org`.
    #[must_use]
    pub fn org(org: uuid::Uuid) -> Self {
        Self {
            org: Some(org),
            ..Self::default()
        }
    }

    /// A transaction acting for `user`, in no org.
    #[must_use]
    pub fn user(user: uuid::Uuid) -> Self {
        Self {
            user: Some(user),
            ..Self::default()
        }
    }

    /// A transaction that may see the row a secret designates.
    #[must_use]
    pub fn token(hash: impl Into<String>) -> Self {
        Self {
            token_hash: Some(hash.into()),
            ..Self::default()
        }
    }
}

/// Begins a transaction whose row-level-security settings are `scope`.
///
/// # Errors
/// Connection or query failures.
pub async fn begin(
    pool: &PgPool,
    scope: &Scope,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let org = scope.org.map(|o| o.to_string()).unwrap_or_default();
    let user = scope.user.map(|u| u.to_string()).unwrap_or_default();
    let token = scope.token_hash.clone().unwrap_or_default();
    sqlx::query(
        "SELECT set_config('app.org_id', $1, true), set_config('app.user_id', $2, true), \
         set_config('app.token_hash', $3, true)",
    )
    .bind(org)
    .bind(user)
    .bind(token)
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}
