//! The real `builderos` binary, as a user runs it: `dev` on the embedded database, `serve`
//! riding out a database outage, `operator`, `migrate`, configuration errors and `--help`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use builderos_shared::pg::{self, Cluster, ClusterOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_builderos");

/// A child process that is killed if the test ends early.
struct Running(Option<Child>);

impl Running {
    fn pid(&self) -> Pid {
        let child = self.0.as_ref().expect("running");
        Pid::from_raw(i32::try_from(child.id()).expect("pid"))
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("running");
        kill(
            Pid::from_raw(i32::try_from(child.id()).expect("pid")),
            Signal::SIGTERM,
        )
        .expect("signal");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn builderos(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("BR_OS_DB_URL")
        .env_remove("BR_OS_MIGRATE_DB_URL")
        .env("BR_OS_LOG_FORMAT", "json")
        .stdin(Stdio::null());
    cmd
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

async fn get_json(url: &str) -> (u16, serde_json::Value) {
    builderos_shared::telemetry::install_crypto_provider();
    let res = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = res.status().as_u16();
    (status, res.json().await.expect("json body"))
}

async fn wait_for_status(url: &str, want: u16, within: Duration) -> Duration {
    builderos_shared::telemetry::install_crypto_provider();
    let start = Instant::now();
    loop {
        if let Ok(res) = reqwest::get(url).await
            && res.status().as_u16() == want
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{url} did not answer {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `builderos dev` on `data_dir` and returns it with the URL it printed.
fn start_dev(data_dir: &Path) -> (Running, String) {
    let mut child = builderos(&["dev"])
        .env("BR_OS_DATA_DIR", data_dir)
        .env("BR_OS_HTTP_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dev");
    let stdout = child.stdout.take().expect("stdout");
    let running = Running(Some(child));
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the URL line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    (running, url)
}

fn postmaster_pid(data_dir: &Path) -> i32 {
    let text =
        std::fs::read_to_string(data_dir.join("pgdata/postmaster.pid")).expect("postmaster.pid");
    text.lines()
        .next()
        .expect("pid line")
        .trim()
        .parse()
        .expect("pid")
}

/// `builderos dev` with no database URL starts a private cluster, serves the documented
/// control shapes (also the operator's under /operator), stops cleanly on SIGTERM leaving no
/// postgres process, and starts again on the same data.
#[tokio::test]
async fn dev_runs_on_the_embedded_database_and_restarts_on_its_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");

    let (dev, url) = start_dev(&data);
    let (status, health) = get_json(&format!("{url}/health")).await;
    assert_eq!(status, 200);
    assert_eq!(health["ok"], true);
    let (status, ready) = get_json(&format!("{url}/ready")).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["database"], true);
    let (_, version) = get_json(&format!("{url}/version")).await;
    assert_eq!(version["commit"], "UNKNOWN");
    assert_eq!(version["env"], "local");
    let (status, operator) = get_json(&format!("{url}/operator/version")).await;
    assert_eq!(status, 200);
    assert_eq!(operator["service"], "builderos-operator");

    let pg_pid = postmaster_pid(&data);
    assert!(pg::process_alive(pg_pid));
    let status = dev.terminate();
    assert!(status.success(), "dev exited with {status}");
    assert!(
        !pg::process_alive(pg_pid),
        "postgres outlived `builderos dev`"
    );

    // A second start reuses the data directory.
    let (dev, url) = start_dev(&data);
    let (status, _) = get_json(&format!("{url}/ready")).await;
    assert_eq!(status, 200);
    let pg_pid = postmaster_pid(&data);
    assert!(dev.terminate().success());
    assert!(!pg::process_alive(pg_pid));
}

/// Killed outright, `dev` still takes its postgres down with it (parent-death signal).
#[tokio::test]
async fn killed_dev_leaves_no_postgres_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (dev, url) = start_dev(&data);
    wait_for_status(&format!("{url}/ready"), 200, Duration::from_secs(30)).await;
    let pg_pid = postmaster_pid(&data);
    kill(dev.pid(), Signal::SIGKILL).expect("kill");
    drop(dev);
    let start = Instant::now();
    while pg::process_alive(pg_pid) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "postgres survived a killed parent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Without PostgreSQL binaries, `dev` exits non-zero with one line saying how to install them.
#[test]
fn dev_without_postgres_binaries_says_how_to_install() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = builderos(&["dev"])
        .env("BR_OS_DATA_DIR", dir.path().join("data"))
        .env("BR_OS_PG_BINDIR", dir.path().join("no-such-bin"))
        .env("BR_OS_LOG", "off")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("apt-get install -y postgresql"),
        "{stderr}"
    );
}

/// `serve` keeps `/health` at 200 while the database is down, turns `/ready` to 503 within
/// 2 s, and recovers by itself when the database is back.
#[tokio::test]
async fn serve_reports_and_survives_a_database_outage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("pg");
    let cluster = Cluster::start(ClusterOptions::throwaway(&root))
        .await
        .expect("cluster");
    let port = cluster.port();
    builderos_shared::db::migrate(&cluster.owner_url(pg::DATABASE))
        .await
        .expect("migrate");

    let http_port = free_port();
    let base = format!("http://127.0.0.1:{http_port}");
    let serve = Running(Some(
        builderos(&["serve"])
            .env("BR_OS_DB_URL", cluster.app_url(pg::DATABASE))
            .env("BR_OS_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve"),
    ));
    wait_for_status(&format!("{base}/ready"), 200, Duration::from_secs(30)).await;

    cluster.stop();
    let took = wait_for_status(&format!("{base}/ready"), 503, Duration::from_secs(2)).await;
    eprintln!("/ready turned 503 {took:?} after the database stopped");
    let (status, body) = get_json(&format!("{base}/ready")).await;
    assert_eq!(status, 503);
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["database"], false);
    assert_eq!(get_json(&format!("{base}/health")).await.0, 200);

    let mut options = ClusterOptions::throwaway(&root);
    options.port = Some(port);
    let cluster = Cluster::start(options).await.expect("restart cluster");
    wait_for_status(&format!("{base}/ready"), 200, Duration::from_secs(15)).await;
    assert!(serve.terminate().success());
    cluster.stop();
}

/// `operator` serves its control endpoints with its own version and commit.
#[tokio::test]
async fn operator_serves_its_control_endpoints() {
    let db = builderos_test_support::TestDb::new().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let operator = Running(Some(
        builderos(&["operator"])
            .env("BR_OS_DB_URL", &db.app_url)
            .env("BR_OS_OPERATOR_ADDR", format!("127.0.0.1:{port}"))
            .env("BR_OS_OPERATOR_VERSION", "9.9.9")
            .env("BR_OS_OPERATOR_COMMIT", "abc123")
            .env("BR_OS_ENV", "staging")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn operator"),
    ));
    wait_for_status(&format!("{base}/ready"), 200, Duration::from_secs(30)).await;
    let (_, version) = get_json(&format!("{base}/version")).await;
    assert_eq!(
        version,
        serde_json::json!({"service": "builderos-operator", "version": "9.9.9", "commit": "abc123", "env": "staging"})
    );
    let (_, health) = get_json(&format!("{base}/health")).await;
    assert_eq!(health["service"], "builderos-operator");
    assert!(operator.terminate().success());
}

/// `serve` and `operator` refuse to start against a database that lacks a migration of their
/// build (or where one failed), saying to run `builderos migrate`; a current schema, or one a
/// newer build migrated, passes.
#[tokio::test]
async fn serve_and_operator_refuse_a_schema_older_than_their_build() {
    use builderos_shared::db::{Schema, SchemaError, check_schema};
    let db = builderos_test_support::TestDb::new().await;
    let app = db.app_pool();
    let su = sqlx::PgPool::connect(&db.superuser_url)
        .await
        .expect("superuser");
    assert_eq!(check_schema(&app).await.expect("check"), Schema::Current);
    let latest: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&su)
        .await
        .expect("latest");

    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999, 'from a newer build', true, '\\x00', 0)",
    )
    .execute(&su)
    .await
    .expect("newer");
    assert_eq!(
        check_schema(&app).await.expect("check"),
        Schema::Ahead {
            database: 99999,
            build: latest
        }
    );

    sqlx::query("DELETE FROM _sqlx_migrations WHERE version >= $1")
        .bind(latest)
        .execute(&su)
        .await
        .expect("older");
    let behind = check_schema(&app).await;
    assert!(
        matches!(behind, Err(SchemaError::Behind { database, build }) if database < latest && build == latest),
        "{behind:?}"
    );
    for command in ["serve", "operator"] {
        let mut child = builderos(&[command])
            .env("BR_OS_DB_URL", &db.app_url)
            .env("BR_OS_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("BR_OS_OPERATOR_ADDR", format!("127.0.0.1:{}", free_port()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("`{command}` started against an old schema");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
            .expect("stderr");
        assert!(!status.success(), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "needs migration {latest}: run `builderos migrate` first"
            )),
            "{command}: {stderr}"
        );
    }

    sqlx::query(
        "UPDATE _sqlx_migrations SET success = false WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&su)
    .await
    .expect("failed");
    assert!(matches!(
        check_schema(&app).await,
        Err(SchemaError::Failed(_))
    ));
}

/// `migrate` applies migrations and is idempotent; the resolved config is logged with the
/// password masked.
#[tokio::test]
async fn migrate_is_idempotent_and_masks_secrets() {
    let db = builderos_test_support::TestDb::new().await;
    for _ in 0..2 {
        let out = builderos(&["migrate"])
            .env("BR_OS_MIGRATE_DB_URL", &db.owner_url)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let password = db
            .owner_url
            .split(':')
            .nth(2)
            .and_then(|s| s.split('@').next())
            .expect("password");
        assert!(
            !stderr.contains(password),
            "password leaked into logs: {stderr}"
        );
        assert!(stderr.contains("configuration resolved"), "{stderr}");
        // Every log line is JSON.
        for line in stderr.lines() {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        }
    }
}

/// A malformed variable stops the process at once with a message naming it (exit 2).
#[test]
fn bad_configuration_fails_fast_naming_the_variable() {
    for (var, value) in [
        ("BR_OS_HTTP_ADDR", "not-an-address"),
        ("BR_OS_OPERATOR_MAX_CONCURRENCY", "lots"),
        ("BR_OS_OPERATOR_DEFAULT_TIMEOUT_SECONDS", "0"),
        ("BR_OS_ENV", "moon"),
    ] {
        let out = builderos(&["serve"]).env(var, value).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{var}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(var), "{var}");
    }
    let out = builderos(&["serve"]).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BR_OS_DB_URL"));
}

/// Every command answers `--help`.
#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["dev", "--help"],
        vec!["serve", "--help"],
        vec!["operator", "--help"],
        vec!["migrate", "--help"],
        vec!["openapi", "--help"],
        vec!["docs", "--help"],
    ] {
        let out = builderos(&args).output().expect("run");
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

/// `openapi --check` and `docs --check` pass on the committed files: the OpenAPI document and
/// the generated reference pages (errors, permissions, pack errors) can't drift from the code.
#[test]
fn generated_files_are_current() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = builderos(&["openapi", "--check"])
        .current_dir(root)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = builderos(&["docs", "--check"])
        .current_dir(root)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
