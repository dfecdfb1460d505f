//! The embedded PostgreSQL cluster behind `builderos dev` and the tests.
//!
//! A private cluster is started from the server binaries already installed on the machine
//! (found through `BR_OS_PG_BINDIR`, `PATH`, `pg_config --bindir` or
//! `/usr/lib/postgresql/*/bin`), in a directory of ours:
//!
//! ```text
//! <root>/pgdata/            the cluster (initdb'd on first start, reused afterwards)
//! <root>/postgres.log       the server's own log
//! <root>/credentials.json   generated role passwords (mode 0600)
//! ```
//!
//! The server listens on 127.0.0.1 only (no Unix socket) with password authentication.
//! PostgreSQL refuses to run as root, so under root it runs as the unprivileged system
//! user `builderos` (created when missing; `nobody` as the last resort).
//!
//! The server runs in its own process group (a terminal's Ctrl-C reaches the app, which then
//! stops the cluster in order) and is tied to the thread that spawned it with
//! `PR_SET_PDEATHSIG`, so it cannot outlive a killed parent.
//!
//! Roles created on start (idempotently):
//! - `postgres`: bootstrap superuser, used only here;
//! - `builderos_owner`: owns the database and its schema, runs migrations;
//! - `builderos_app`: a NOLOGIN group that migrations grant table privileges to;
//! - `builderos_maintenance`: a NOLOGIN group, granted to the owner, that may prune audit events;
//! - `builderos_api`: the LOGIN role the app uses — a member of `builderos_app`, neither
//!   superuser nor `BYPASSRLS` nor owner of anything, so row-level security applies to it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, User};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection};

/// The role that owns the schema and runs migrations.
pub const OWNER_ROLE: &str = "builderos_owner";
/// The NOLOGIN group role that table privileges are granted to.
pub const APP_GROUP_ROLE: &str = "builderos_app";
/// The LOGIN role the app connects as (a member of [`APP_GROUP_ROLE`]).
pub const APP_LOGIN_ROLE: &str = "builderos_api";
/// The bootstrap superuser of an embedded cluster.
pub const SUPERUSER_ROLE: &str = "postgres";
/// The database `dev` uses.
pub const DATABASE: &str = "builderos";

const SYSTEM_USER: &str = "builderos";

/// Why the embedded cluster could not be started or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// No usable PostgreSQL server binaries.
    #[error("{0}")]
    NotInstalled(String),
    /// A file-system operation on the cluster's directory failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The data directory can't be reached by the unprivileged user PostgreSQL runs as.
    #[error(
        "PostgreSQL runs as the unprivileged user `{user}` (it refuses root), and `{user}` cannot \
         enter {dir}: set BR_OS_DATA_DIR to a directory it can reach (for example under /var/lib or /tmp)"
    )]
    DataDirUnreachable {
        /// The directory that blocks traversal.
        dir: PathBuf,
        /// The user PostgreSQL runs as.
        user: String,
    },
    /// `initdb` failed.
    #[error("initdb failed: {0}")]
    InitDb(String),
    /// The server did not come up.
    #[error("PostgreSQL did not start: {0}")]
    Start(String),
    /// A bootstrap statement failed.
    #[error("bootstrapping the embedded cluster failed: {0}")]
    Bootstrap(#[from] sqlx::Error),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
    let context = context.into();
    move |source| PgError::Io { context, source }
}

/// Finds a directory holding the `postgres` and `initdb` server binaries.
///
/// # Errors
/// [`PgError::NotInstalled`] with one line saying how to install them.
pub fn find_bindir(explicit: Option<&Path>) -> Result<PathBuf, PgError> {
    let usable = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    if let Some(dir) = explicit {
        return if usable(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(PgError::NotInstalled(format!(
                "BR_OS_PG_BINDIR={} does not hold the PostgreSQL server binaries (postgres, initdb); \
                 install them (Debian/Ubuntu: apt-get install -y postgresql) or set BR_OS_DB_URL to an existing database",
                dir.display()
            )))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if usable(&dir) {
                return Ok(dir);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if usable(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            usable(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        PgError::NotInstalled(
            "PostgreSQL server binaries (postgres, initdb) not found on PATH, via pg_config or under \
             /usr/lib/postgresql/*/bin: install them (Debian/Ubuntu: apt-get install -y postgresql) \
             or set BR_OS_DB_URL to an existing database"
                .to_owned(),
        )
    })
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The directory holding `pgdata/`, the log and the credentials.
    pub root: PathBuf,
    /// Explicit binaries directory (`BR_OS_PG_BINDIR`).
    pub bindir: Option<PathBuf>,
    /// The port to listen on; a free one when `None`.
    pub port: Option<u16>,
    /// `false` turns off fsync and friends: for throwaway test clusters only.
    pub durable: bool,
    /// `max_connections` of the server.
    pub max_connections: u32,
}

impl ClusterOptions {
    /// Options for a durable developer cluster under `root`.
    #[must_use]
    pub fn dev(root: impl Into<PathBuf>, bindir: Option<PathBuf>) -> Self {
        Self {
            root: root.into(),
            bindir,
            port: None,
            durable: true,
            max_connections: 100,
        }
    }

    /// Options for a fast, non-durable throwaway cluster under `root`.
    #[must_use]
    pub fn throwaway(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            bindir: None,
            port: None,
            durable: false,
            max_connections: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Credentials {
    superuser_password: String,
    owner_password: String,
    app_password: String,
}

impl Credentials {
    fn generate() -> Result<Self, PgError> {
        Ok(Self {
            superuser_password: random_hex()?,
            owner_password: random_hex()?,
            app_password: random_hex()?,
        })
    }
}

fn random_hex() -> Result<String, PgError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| PgError::Start(format!("no randomness: {e}")))?;
    Ok(hex::encode(bytes))
}

#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: Uid,
    gid: Gid,
}

/// A running embedded cluster. Stop it with [`Cluster::stop`]; if the process dies first,
/// the server gets a signal and shuts down by itself.
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    port: u16,
    pid: Pid,
    credentials: Credentials,
    exited: Mutex<Option<Receiver<ExitStatus>>>,
}

impl Cluster {
    /// Starts (and on first use creates) the cluster, waits until it accepts connections and
    /// makes sure the roles and the `builderos` database exist.
    ///
    /// # Errors
    /// Any [`PgError`]; the server's log tail is included when it failed to start.
    pub async fn start(options: ClusterOptions) -> Result<Self, PgError> {
        let prepared = tokio::task::spawn_blocking(move || prepare_and_spawn(&options))
            .await
            .map_err(|e| PgError::Start(format!("start task failed: {e}")))??;
        let cluster = prepared;
        cluster.wait_ready().await?;
        cluster.bootstrap().await?;
        Ok(cluster)
    }

    /// The port the server listens on (127.0.0.1).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The server's process id.
    #[must_use]
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// URL for the bootstrap superuser on database `db`.
    #[must_use]
    pub fn superuser_url(&self, db: &str) -> String {
        self.url(SUPERUSER_ROLE, &self.credentials.superuser_password, db)
    }

    /// URL for the schema owner on database `db`.
    #[must_use]
    pub fn owner_url(&self, db: &str) -> String {
        self.url(OWNER_ROLE, &self.credentials.owner_password, db)
    }

    /// URL for the app's role on database `db`.
    #[must_use]
    pub fn app_url(&self, db: &str) -> String {
        self.url(APP_LOGIN_ROLE, &self.credentials.app_password, db)
    }

    fn url(&self, role: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{role}:{password}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    async fn wait_ready(&self) -> Result<(), PgError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = self.superuser_url("postgres");
        loop {
            if let Some(status) = self.try_exit_status() {
                return Err(PgError::Start(format!(
                    "the server exited ({status}); its log says:\n{}",
                    log_tail(&self.root)
                )));
            }
            match PgConnection::connect(&url).await {
                Ok(conn) => {
                    drop(conn.close().await);
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(PgError::Start(format!(
                        "not accepting connections after 60 s ({e}); its log says:\n{}",
                        log_tail(&self.root)
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn bootstrap(&self) -> Result<(), PgError> {
        let mut conn = PgConnection::connect(&self.superuser_url("postgres")).await?;
        // Passwords are hex, so inlining them is safe; DDL takes no bind parameters.
        let sql = format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{OWNER_ROLE}') THEN
                 CREATE ROLE {OWNER_ROLE} LOGIN;
               END IF;
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_GROUP_ROLE}') THEN
                 CREATE ROLE {APP_GROUP_ROLE} NOLOGIN;
               END IF;
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_LOGIN_ROLE}') THEN
                 CREATE ROLE {APP_LOGIN_ROLE} LOGIN;
               END IF;
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'builderos_maintenance') THEN
                 CREATE ROLE builderos_maintenance NOLOGIN;
               END IF;
             END $$;
             GRANT builderos_maintenance TO {OWNER_ROLE};
             ALTER ROLE {OWNER_ROLE} LOGIN NOSUPERUSER PASSWORD '{owner}';
             ALTER ROLE {APP_LOGIN_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD '{app}';
             GRANT {APP_GROUP_ROLE} TO {APP_LOGIN_ROLE};",
            owner = self.credentials.owner_password,
            app = self.credentials.app_password,
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(DATABASE)
                .fetch_optional(&mut conn)
                .await?;
        if exists.is_none() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {DATABASE} OWNER {OWNER_ROLE}"
            )))
            .execute(&mut conn)
            .await?;
        }
        conn.close().await?;
        Ok(())
    }

    fn try_exit_status(&self) -> Option<ExitStatus> {
        let guard = self.exited.lock().ok()?;
        guard.as_ref()?.try_recv().ok()
    }

    /// Stops the server: a fast shutdown (clients are disconnected, committed work is kept),
    /// escalating to an immediate shutdown and then SIGKILL if it does not exit in time.
    /// Returns once the process is gone. Calling it twice is harmless.
    pub fn stop(&self) {
        let Ok(mut guard) = self.exited.lock() else {
            return;
        };
        let Some(exited) = guard.take() else { return };
        for (signal, wait) in [
            (Signal::SIGINT, Duration::from_secs(20)),
            (Signal::SIGQUIT, Duration::from_secs(5)),
            (Signal::SIGKILL, Duration::from_secs(5)),
        ] {
            if kill(self.pid, signal).is_err() {
                // Already gone.
                let _ = exited.recv_timeout(Duration::from_secs(1));
                return;
            }
            match exited.recv_timeout(wait) {
                Ok(_) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    tracing::warn!(?signal, "PostgreSQL did not stop in time; escalating");
                }
            }
        }
    }

    /// [`Cluster::stop`] from async code.
    pub async fn stop_async(self: &std::sync::Arc<Self>) {
        let me = std::sync::Arc::clone(self);
        drop(tokio::task::spawn_blocking(move || me.stop()).await);
    }
}

fn prepare_and_spawn(options: &ClusterOptions) -> Result<Cluster, PgError> {
    let bindir = find_bindir(options.bindir.as_deref())?;
    let run_as = if Uid::effective().is_root() {
        Some(system_user()?)
    } else {
        None
    };
    let root = absolute(&options.root)?;
    fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
    let pgdata = root.join("pgdata");
    if let Some(user) = run_as {
        check_traversable(&root, user)?;
    }
    let credentials = load_or_create_credentials(&root)?;
    if !pgdata.join("PG_VERSION").is_file() {
        initdb(
            &bindir,
            &root,
            &pgdata,
            &credentials,
            run_as,
            options.durable,
        )?;
    }
    let port = match options.port {
        Some(port) => port,
        None => free_port()?,
    };
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("postgres.log"))
        .map_err(io("opening postgres.log"))?;
    let log_err = log.try_clone().map_err(io("opening postgres.log"))?;

    let mut command = Command::new(bindir.join("postgres"));
    command
        .arg("-D")
        .arg(&pgdata)
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "unix_socket_directories="])
        .args([
            "-c",
            &format!("max_connections={}", options.max_connections),
        ])
        // The job queue turns its rows over fast: every claimed job leaves index entries that
        // claims must step over until a vacuum removes them. Look for work every few seconds
        // instead of every minute (see docs/operations.md).
        .args(["-c", "autovacuum_naptime=2s"]);
    if !options.durable {
        command.args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]);
    }
    command
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0);
    if let Some(user) = run_as {
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    set_parent_death_signal(&mut command);

    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (exit_tx, exit_rx) = std::sync::mpsc::channel();
    // The keeper thread spawns the server and waits for it for as long as it runs. Parent-death
    // signals fire when the *spawning thread* exits, so the spawn must happen on a thread
    // that lives exactly as long as the server is needed.
    std::thread::Builder::new()
        .name("postgres-keeper".to_owned())
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let pid = child.id();
                if started_tx.send(Ok(pid)).is_err() {
                    return;
                }
                if let Ok(status) = child.wait() {
                    let _ = exit_tx.send(status);
                }
            }
            Err(e) => drop(started_tx.send(Err(e))),
        })
        .map_err(io("spawning the postgres keeper thread"))?;
    let pid = started_rx
        .recv()
        .map_err(|_| PgError::Start("the keeper thread died".to_owned()))?
        .map_err(io("starting postgres"))?;
    let pid = i32::try_from(pid).map_err(|_| PgError::Start("pid out of range".to_owned()))?;
    Ok(Cluster {
        root,
        port,
        pid: Pid::from_raw(pid),
        credentials,
        exited: Mutex::new(Some(exit_rx)),
    })
}

#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only makes the async-signal-safe
    // prctl(2) call. It runs after the uid/gid switch, which would otherwise clear the setting.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGQUIT).map_err(std::io::Error::from)
        });
    }
}

fn initdb(
    bindir: &Path,
    root: &Path,
    pgdata: &Path,
    credentials: &Credentials,
    run_as: Option<RunAs>,
    durable: bool,
) -> Result<(), PgError> {
    // A half-made pgdata from an interrupted first start is useless: start over.
    if pgdata.exists() {
        fs::remove_dir_all(pgdata).map_err(io("removing an incomplete pgdata"))?;
    }
    fs::create_dir(pgdata).map_err(io(format!("creating {}", pgdata.display())))?;
    fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700))
        .map_err(io("restricting pgdata"))?;
    let pwfile = root.join("initdb.pw");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&pwfile)
            .map_err(io("writing the initdb password file"))?;
        f.write_all(credentials.superuser_password.as_bytes())
            .map_err(io("writing the initdb password file"))?;
    }
    if let Some(user) = run_as {
        for path in [pgdata, pwfile.as_path()] {
            nix::unistd::chown(path, Some(user.uid), Some(user.gid))
                .map_err(|e| io(format!("chown {}", path.display()))(e.into()))?;
        }
    }
    let mut command = Command::new(bindir.join("initdb"));
    command
        .arg("-D")
        .arg(pgdata)
        .args(["-U", SUPERUSER_ROLE, "-E", "UTF8", "--locale=C"])
        .args(["--auth-host=scram-sha-256", "--auth-local=scram-sha-256"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdin(Stdio::null());
    if !durable {
        command.arg("--no-sync");
    }
    if let Some(user) = run_as {
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    let output = command.output();
    drop(fs::remove_file(&pwfile));
    let output = output.map_err(io("running initdb"))?;
    if !output.status.success() {
        return Err(PgError::InitDb(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(())
}

fn load_or_create_credentials(root: &Path) -> Result<Credentials, PgError> {
    let path = root.join("credentials.json");
    if let Ok(bytes) = fs::read(&path)
        && let Ok(credentials) = serde_json::from_slice::<Credentials>(&bytes)
    {
        return Ok(credentials);
    }
    let credentials = Credentials::generate()?;
    let json = serde_json::to_vec_pretty(&credentials)
        .map_err(|e| PgError::Start(format!("encoding credentials: {e}")))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io("writing credentials.json"))?;
    f.write_all(&json).map_err(io("writing credentials.json"))?;
    // A fresh password set only matches a fresh cluster.
    let pgdata = root.join("pgdata");
    if pgdata.join("PG_VERSION").is_file() {
        fs::remove_dir_all(&pgdata)
            .map_err(io("removing a cluster whose credentials were lost"))?;
    }
    Ok(credentials)
}

fn system_user() -> Result<RunAs, PgError> {
    let lookup = |name: &str| {
        User::from_name(name).ok().flatten().map(|u| RunAs {
            uid: u.uid,
            gid: u.gid,
        })
    };
    if let Some(user) = lookup(SYSTEM_USER) {
        return Ok(user);
    }
    // Several test binaries may race here; useradd locks /etc/passwd itself and a loser
    // simply finds the user afterwards.
    let created = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
        ])
        .args(["--shell", "/usr/sbin/nologin", SYSTEM_USER])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Some(user) = lookup(SYSTEM_USER) {
        return Ok(user);
    }
    tracing::warn!(
        ?created,
        "could not create the `builderos` system user; running PostgreSQL as nobody"
    );
    lookup("nobody").ok_or_else(|| {
        PgError::Start(
            "running as root, and neither a `builderos` nor a `nobody` user exists to run PostgreSQL as"
                .to_owned(),
        )
    })
}

fn check_traversable(root: &Path, user: RunAs) -> Result<(), PgError> {
    let name = User::from_uid(user.uid)
        .ok()
        .flatten()
        .map_or_else(|| user.uid.to_string(), |u| u.name);
    // The unprivileged user must reach `root` (to enter pgdata); it needs search permission
    // on every ancestor. `root` itself gets o+x, since we created it for this purpose.
    if let Ok(meta) = fs::metadata(root)
        && meta.mode() & 0o001 == 0
    {
        let mode = (meta.mode() & 0o7777) | 0o011;
        fs::set_permissions(root, fs::Permissions::from_mode(mode)).map_err(io(format!(
            "opening {} to the postgres user",
            root.display()
        )))?;
    }
    for dir in root.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(dir) else {
            continue;
        };
        let bit = if meta.uid() == user.uid.as_raw() {
            0o100
        } else if meta.gid() == user.gid.as_raw() {
            0o010
        } else {
            0o001
        };
        if meta.mode() & bit == 0 {
            return Err(PgError::DataDirUnreachable {
                dir: dir.to_path_buf(),
                user: name,
            });
        }
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, PgError> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()
            .map_err(io("reading the working directory"))?
            .join(path))
    }
}

fn free_port() -> Result<u16, PgError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io("finding a free port"))?
        .port();
    Ok(port)
}

fn log_tail(root: &Path) -> String {
    let text = fs::read_to_string(root.join("postgres.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Removes a directory tree, ignoring a tree that is already gone.
pub fn remove_tree(path: &Path) {
    if path.exists() {
        drop(fs::remove_dir_all(path));
    }
}

/// Whether a process with this pid is alive (signal 0 probe).
#[must_use]
pub fn process_alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}
