//! Test support: a throwaway PostgreSQL cluster per test process, a fresh migrated database
//! per test, and the app spawned on a random port with an HTTP client.
//!
//! The cluster lives under the system temp directory in `builderos-test-<pid>/`. It is started
//! once per test binary, on first use, from the PostgreSQL server binaries installed on the
//! machine (as an unprivileged user when the tests run as root). It cannot outlive the tests:
//! the server is tied to the test process by a parent-death signal, and a detached watcher
//! removes the directory once both are gone — also when a test fails or the binary is killed.
//! Directories left by killed runs of earlier builds are swept on start.
//!
//! Each test gets its own database, copied from a migrated template, and connects as the app
//! role (`builderos_api`: not superuser, not `BYPASSRLS`, owner of nothing).
//!
//! # Layout
//! - [`cluster`]: the shared cluster, started once.
//! - [`TestDb`]: a fresh database per test.
//! - [`TestApp`]: the API on a random port with a client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use builderos_shared::config::Config;
use builderos_shared::pg::{self, Cluster, ClusterOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

const TEMPLATE_DB: &str = "builderos_template";

static CLUSTER: OnceCell<Arc<Cluster>> = OnceCell::const_new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The test process's cluster, started (and its template database migrated) on first use.
///
/// # Panics
/// When PostgreSQL can't be started: tests can't run without it, and the message says why.
pub async fn cluster() -> Arc<Cluster> {
    builderos_shared::telemetry::install_crypto_provider();
    let cluster = CLUSTER
        .get_or_init(|| async {
            sweep_stale_dirs();
            let root = test_root(std::process::id());
            pg::remove_tree(&root);
            let cluster = match Cluster::start(ClusterOptions::throwaway(&root)).await {
                Ok(cluster) => Arc::new(cluster),
                Err(e) => panic!("cannot start the test PostgreSQL cluster: {e}"),
            };
            watch_and_clean(cluster.pid(), &root);
            create_template(&cluster).await;
            cluster
        })
        .await;
    Arc::clone(cluster)
}

fn test_root(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("builderos-test-{pid}"))
}

/// Removes directories of earlier test processes that are no longer alive.
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("builderos-test-"))
        else {
            continue;
        };
        if let Ok(pid) = pid.parse::<i32>()
            && !pg::process_alive(pid)
        {
            pg::remove_tree(&entry.path());
        }
    }
}

/// A detached shell waits for the test process and the server to be gone, then removes the
/// cluster directory. Being a separate process, it also cleans up after a killed test binary.
fn watch_and_clean(server_pid: i32, root: &std::path::Path) {
    let script = format!(
        "while kill -0 {test} 2>/dev/null || kill -0 {server} 2>/dev/null; do sleep 0.2; done; rm -rf '{root}'",
        test = std::process::id(),
        server = server_pid,
        root = root.display(),
    );
    let spawned = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        eprintln!(
            "warning: cannot start the cleanup watcher ({e}); {} may be left behind",
            root.display()
        );
    }
}

use std::os::unix::process::CommandExt as _;

/// A superuser connection to the cluster's `postgres` database, for creating and dropping
/// databases.
async fn maintenance_conn(cluster: &Cluster) -> PgConnection {
    PgConnection::connect(&cluster.superuser_url("postgres"))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test cluster: {e}"))
}

async fn create_template(cluster: &Cluster) {
    let mut conn = maintenance_conn(cluster).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {TEMPLATE_DB} OWNER {}",
        pg::OWNER_ROLE
    )))
    .execute(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("cannot create the template database: {e}"));
    drop(conn.close().await);
    builderos_shared::db::migrate(&cluster.owner_url(TEMPLATE_DB))
        .await
        .unwrap_or_else(|e| panic!("migrations failed on the template database: {e}"));
}

/// A fresh, migrated database for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// The database's name.
    pub name: String,
    /// URL for the app role (row-level security applies).
    pub app_url: String,
    /// URL for the schema owner (for arranging what the app can't do, e.g. tampering).
    pub owner_url: String,
    /// URL for the superuser.
    pub superuser_url: String,
}

impl TestDb {
    /// Creates a database from the migrated template.
    ///
    /// # Panics
    /// When the cluster can't create it.
    pub async fn new() -> Self {
        let cluster = cluster().await;
        let name = format!("test_{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
        let mut conn = maintenance_conn(&cluster).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB} OWNER {}",
            pg::OWNER_ROLE
        )))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        drop(conn.close().await);
        Self {
            app_url: cluster.app_url(&name),
            owner_url: cluster.owner_url(&name),
            superuser_url: cluster.superuser_url(&name),
            name,
        }
    }

    /// Drops this database (closing whatever is still connected to it) and checkpoints the
    /// cluster, so that nothing of it — autovacuum, dirty buffers — runs on into what the
    /// process measures next.
    ///
    /// # Panics
    /// When the cluster refuses.
    pub async fn drop_database(self) {
        let cluster = cluster().await;
        let mut conn = maintenance_conn(&cluster).await;
        // Two statements, each its own transaction (DROP DATABASE can't run inside one).
        for sql in [
            format!("DROP DATABASE {} WITH (FORCE)", self.name),
            "CHECKPOINT".to_owned(),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("cannot drop test database {}: {e}", self.name));
        }
        drop(conn.close().await);
    }

    /// A pool connected as the app role.
    ///
    /// # Panics
    /// On an invalid URL (never for URLs made here).
    #[must_use]
    pub fn app_pool(&self) -> PgPool {
        builderos_shared::db::connect_lazy(&self.app_url, 10)
            .unwrap_or_else(|e| panic!("bad app url: {e}"))
    }
}

/// The configuration tests run with: every default, nothing from the environment.
///
/// # Panics
/// Never: the defaults always parse.
#[must_use]
pub fn test_config() -> Config {
    let mut config = Config::from_lookup(|name| (name == "BR_OS_ENV").then(|| "test".to_owned()))
        .unwrap_or_else(|e| panic!("default config: {e}"));
    // Artifacts of this test process go beside its cluster and are swept with it.
    config.artifacts_dir = test_root(std::process::id()).join("artifacts");
    config
}

/// The API served on a random loopback port, over its own fresh database.
#[derive(Debug)]
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// An HTTP client for it.
    pub client: reqwest::Client,
    /// Its database.
    pub db: TestDb,
    /// The app role's pool the server uses.
    pub pool: PgPool,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestApp {
    /// Spawns the API over a fresh database.
    pub async fn spawn() -> Self {
        Self::spawn_with(Router::new()).await
    }

    /// Spawns the API with `config` (e.g. with sign-in providers) over a fresh database.
    pub async fn spawn_with_config(config: Config) -> Self {
        let db = TestDb::new().await;
        let pool = db.app_pool();
        Self::spawn_router(db, pool.clone(), move |body_limit| {
            let state = builderos_api::AppState::new(&config, pool)
                .unwrap_or_else(|e| panic!("app state: {e}"));
            builderos_shared::http::finish(
                builderos_api::router(state),
                builderos_api::SERVICE,
                body_limit,
            )
        })
        .await
    }

    /// Spawns the API with `extra` routes merged in (tests use this to add a panicking route
    /// or a JSON echo to exercise the middleware).
    pub async fn spawn_with(extra: Router) -> Self {
        let db = TestDb::new().await;
        let pool = db.app_pool();
        let config = test_config();
        Self::spawn_router(db, pool.clone(), |body_limit| {
            let state = builderos_api::AppState::new(&config, pool)
                .unwrap_or_else(|e| panic!("app state: {e}"));
            builderos_shared::http::finish(
                builderos_api::router(state).merge(extra),
                builderos_api::SERVICE,
                body_limit,
            )
        })
        .await
    }

    /// A second API server over the same database (another replica, with its own pool and
    /// cache), for checking what replicas see of each other's writes.
    pub async fn replica(&self) -> Self {
        let db = self.db.clone();
        let pool = db.app_pool();
        let config = test_config();
        Self::spawn_router(db, pool.clone(), |body_limit| {
            let state = builderos_api::AppState::new(&config, pool)
                .unwrap_or_else(|e| panic!("app state: {e}"));
            builderos_shared::http::finish(
                builderos_api::router(state),
                builderos_api::SERVICE,
                body_limit,
            )
        })
        .await
    }

    /// Spawns whatever router `build` makes (given the body limit) over `db`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn spawn_router(
        db: TestDb,
        pool: PgPool,
        build: impl FnOnce(usize) -> Router,
    ) -> Self {
        builderos_shared::telemetry::init_logging(
            "warn",
            builderos_shared::config::LogFormat::Pretty,
        );
        let router = build(test_config().body_limit_bytes);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local addr: {e}"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(builderos_shared::http::serve(listener, router, async {
            drop(rx.await);
        }));
        Self {
            addr,
            client: reqwest::Client::new(),
            db,
            pool,
            shutdown: Some(tx),
        }
    }

    /// The absolute URL of `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path`.
    ///
    /// # Panics
    /// When the request can't be sent at all.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

/// A signed-up user's session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user id.
    pub user_id: String,
    /// Their email.
    pub email: String,
    /// Access JWT.
    pub access: String,
    /// Refresh token.
    pub refresh: String,
}

/// The password test users sign up with.
pub const PASSWORD: &str = "correct horse battery staple";

impl TestApp {
    /// Sends `method path` with an optional bearer token and JSON body; returns status and JSON
    /// body (`null` for empty bodies).
    ///
    /// # Panics
    /// When the request can't be sent or the body isn't JSON.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.client.request(method.clone(), self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = res.status().as_u16();
        let text = res
            .text()
            .await
            .unwrap_or_else(|e| panic!("reading body: {e}"));
        let json = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {text}"))
        };
        (status, json)
    }

    /// `GET` as `token`.
    pub async fn get_as(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    /// Starts an operator worker over this app's database (test settings: a 2 s lease, quick
    /// polling, a short shutdown grace). Stop it with `.stop().await`.
    ///
    /// # Panics
    /// On an invalid database URL (never for URLs made here).
    #[must_use]
    pub fn start_operator(&self) -> builderos_operator::runner::Running {
        self.start_operator_with(|_, _| {})
    }

    /// [`TestApp::start_operator`] with the configuration and worker settings adjusted by
    /// `adjust`.
    ///
    /// # Panics
    /// On an invalid database URL (never for URLs made here).
    #[must_use]
    pub fn start_operator_with(
        &self,
        adjust: impl FnOnce(&mut Config, &mut builderos_operator::worker::WorkerConfig),
    ) -> builderos_operator::runner::Running {
        let mut config = test_config();
        let mut worker = builderos_operator::runner::worker_config(&config);
        worker.lease = std::time::Duration::from_secs(2);
        worker.poll = std::time::Duration::from_millis(200);
        worker.shutdown_grace = std::time::Duration::from_secs(2);
        adjust(&mut config, &mut worker);
        builderos_operator::runner::spawn_worker(&config, &self.db.app_url, worker)
            .unwrap_or_else(|e| panic!("operator: {e}"))
    }

    /// `GET` as `token` until `check` holds, for at most 10 s (a third of the read cache's
    /// expiry): for changes that reach this replica through a PostgreSQL notification — writes
    /// made by another replica or straight into the database.
    pub async fn eventually(
        &self,
        path: &str,
        token: &str,
        check: impl Fn(u16, &serde_json::Value) -> bool,
    ) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (status, body) = self.get_as(path, token).await;
            if check(status, &body) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "GET {path} still answers {status} {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// `POST` JSON as `token` (or anonymously).
    pub async fn post_as(
        &self,
        path: &str,
        token: Option<&str>,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// Signs up `email` with [`PASSWORD`].
    ///
    /// # Panics
    /// When sign-up fails.
    pub async fn signup(&self, email: &str) -> Session {
        let (status, body) = self
            .post_as(
                "/v1/auth/signup",
                None,
                serde_json::json!({"email": email, "password": PASSWORD, "display_name": email.split('@').next().unwrap_or("user")}),
            )
            .await;
        assert_eq!(status, 201, "signup {email}: {body}");
        session_from(email, &body)
    }

    /// Creates an org as `owner`; returns its id.
    ///
    /// # Panics
    /// When creation fails.
    pub async fn create_org(&self, owner: &Session, slug: &str) -> String {
        let (status, body) = self
            .post_as(
                "/v1/orgs",
                Some(&owner.access),
                serde_json::json!({"slug": slug, "name": slug}),
            )
            .await;
        assert_eq!(status, 201, "create org {slug}: {body}");
        body["id"].as_str().unwrap_or_default().to_owned()
    }

    /// Invites `email` into `org` as `role` (as `owner`), signs them up and accepts the
    /// invitation with the token from the mail outbox; returns their session.
    ///
    /// # Panics
    /// When any step fails.
    pub async fn member(&self, owner: &Session, org: &str, email: &str, role: &str) -> Session {
        let (status, body) = self
            .post_as(
                &format!("/v1/orgs/{org}/invitations"),
                Some(&owner.access),
                serde_json::json!({"email": email, "role": role}),
            )
            .await;
        assert_eq!(status, 201, "invite {email}: {body}");
        let mail: String = sqlx::query_scalar("SELECT body FROM mail_outbox WHERE to_address = $1")
            .bind(email)
            .fetch_one(&self.superuser_pool())
            .await
            .unwrap_or_else(|e| panic!("invitation mail to {email}: {e}"));
        let token = mail
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|w| w.starts_with("bosi_"))
            .unwrap_or_else(|| panic!("no invitation token in {mail}"))
            .to_owned();
        let user = self.signup(email).await;
        let (status, body) = self
            .post_as(
                "/v1/invitations/accept",
                Some(&user.access),
                serde_json::json!({"token": token}),
            )
            .await;
        assert_eq!(status, 200, "accept {email}: {body}");
        user
    }

    /// A pool connected as the cluster's superuser (which bypasses row-level security), for
    /// arranging and inspecting what the app role can't see or do.
    #[must_use]
    pub fn superuser_pool(&self) -> PgPool {
        builderos_shared::db::connect_lazy(&self.db.superuser_url, 4)
            .unwrap_or_else(|e| panic!("bad url: {e}"))
    }

    /// Seals every journaled audit event into its chain, and waits for sealers that hold a
    /// chain to commit, so that a test reading `audit_events` directly sees every event
    /// committed before. (The API's own reads of the trail seal by themselves.)
    ///
    /// # Panics
    /// On database errors.
    pub async fn seal_audit(&self) {
        seal_journal(&self.pool, &self.superuser_pool()).await;
    }
}

/// Seals every journaled audit event (as a sealer would, with the app's `pool`) until
/// `superuser` finds the journal empty — a chain another sealer held is sealed when its batch
/// commits.
///
/// # Panics
/// On database errors, or when events still wait after 10 s.
pub async fn seal_journal(pool: &PgPool, superuser: &PgPool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        builderos_api::audit::sealer::seal_all(pool)
            .await
            .unwrap_or_else(|e| panic!("seal: {e}"));
        let waiting: bool = sqlx::query_scalar("SELECT EXISTS (SELECT FROM audit_journal)")
            .fetch_one(superuser)
            .await
            .unwrap_or_else(|e| panic!("journal: {e}"));
        if !waiting {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit events still wait in the journal"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Reads a SessionTokens body.
///
/// # Panics
/// When fields are missing.
#[must_use]
pub fn session_from(email: &str, body: &serde_json::Value) -> Session {
    Session {
        user_id: body["user"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no user id in {body}"))
            .to_owned(),
        email: email.to_owned(),
        access: body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token in {body}"))
            .to_owned(),
        refresh: body["refresh_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no refresh token in {body}"))
            .to_owned(),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Reads a response as JSON, panicking with the body when it isn't.
///
/// # Panics
/// When the body isn't JSON.
pub async fn json(response: reqwest::Response) -> serde_json::Value {
    let text = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("reading body: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"))
}

/// A `builderos operator` child process for tests and benches. It is killed when this handle
/// is dropped, and — by a small watcher — when the test process dies first, so a failing test
/// never leaves an operator behind.
#[derive(Debug)]
pub struct OperatorProcess {
    child: std::process::Child,
}

impl OperatorProcess {
    /// Starts `bin operator` over `db_url` with the test artifacts directory, a random control
    /// port, warn-level logs on stderr, and `env` on top.
    ///
    /// # Panics
    /// When the process can't be started.
    #[must_use]
    pub fn spawn(bin: &str, db_url: &str, env: &[(&str, String)]) -> Self {
        let mut command = Command::new(bin);
        command
            .arg("operator")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BR_OS_DB_URL", db_url)
            .env("BR_OS_OPERATOR_ADDR", "127.0.0.1:0")
            .env("BR_OS_ARTIFACTS_DIR", test_config().artifacts_dir)
            .env("BR_OS_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin} operator: {e}"));
        let watcher = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {me} 2>/dev/null && kill -0 {child} 2>/dev/null; do sleep 0.2; done; kill -9 {child} 2>/dev/null",
                me = std::process::id(),
                child = child.id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        if let Err(e) = watcher {
            eprintln!("warning: cannot watch the operator child ({e})");
        }
        Self { child }
    }

    /// The child's process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and waits for the process to exit.
    ///
    /// # Panics
    /// When the process can't be signalled or waited for.
    pub fn signal_and_wait(&mut self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("{signal}: {e}"));
        self.child.wait().unwrap_or_else(|e| panic!("wait: {e}"));
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
