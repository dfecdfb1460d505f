//! Closed-loop HTTP load for the bench binaries: `CONNECTIONS` clients each send the next
//! request as soon as the last one is answered, for a fixed duration.

use std::sync::Arc;
use std::time::{Duration, Instant};

pub const CONNECTIONS: usize = 32;

/// What one load phase measured.
pub struct Load {
    pub requests: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Load {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(i).copied().unwrap_or_default()
    }

    /// One line: requests/s, p50, p99, errors.
    pub fn line(&self, what: &str) -> String {
        format!(
            "  {what:<46} {:>8.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   errors {}",
            self.rps(),
            ms(self.percentile(0.50)),
            ms(self.percentile(0.99)),
            self.errors
        )
    }
}

/// `GET url` with `headers` from [`CONNECTIONS`] clients for `duration`. A 2xx or 304 answer
/// counts as a request; anything else as an error.
pub async fn load(url: String, headers: Vec<(&'static str, String)>, duration: Duration) -> Load {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .expect("client");
    let url = Arc::new(url);
    let headers = Arc::new(headers);
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (client, url, headers) = (client.clone(), Arc::clone(&url), Arc::clone(&headers));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                let mut req = client.get(url.as_str());
                for (name, value) in headers.iter() {
                    req = req.header(*name, value);
                }
                match req.send().await {
                    Ok(res) if res.status().is_success() || res.status().as_u16() == 304 => {
                        let _ = res.bytes().await;
                        latencies.push(t.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await.expect("task");
        all.extend(latencies);
        errors += e;
    }
    Load {
        requests: all.len(),
        errors,
        elapsed: started.elapsed(),
        latencies: all,
    }
}

/// Bearer authorization header.
pub fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Seconds per load phase: `BENCH_SECONDS`, default 5.
pub fn phase_seconds() -> u64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// The multi-threaded runtime the server and the load share.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
