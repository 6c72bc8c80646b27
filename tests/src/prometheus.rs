//! A real Prometheus server (Debian's `prometheus` package) scraping one target every second,
//! with its configuration and storage in a temporary directory of its own and its web API on a
//! free loopback port; killed and removed when it drops. Its HTTP API is read with a plain
//! HTTP/1.0 GET (the tests need nothing more of HTTP).

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// The alerting rules shipped for operators.
pub fn alert_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/sshtrace-alerts.yml")
}

/// Fails the test, saying why, when `binary` (from the `prometheus` package) is missing.
pub fn require(binary: &str) {
    assert!(
        Path::new(binary).exists(),
        "{binary} is missing: install Debian's `prometheus` package (`cargo xtask setup` does)"
    );
}

/// A loopback address with a port nothing listens on right now.
pub fn free_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address")
}

/// Scrapes the target and evaluates the shipped rules every second.
const CONFIG: &str = "\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - RULES
scrape_configs:
  - job_name: sshtrace
    static_configs:
      - targets: ['TARGET']
";

pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub web: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second as job `sshtrace`, with the shipped
    /// alerting rules loaded, and waits until its API answers.
    pub fn start(name: &str, target: SocketAddr) -> Self {
        require(PROMETHEUS);
        let dir = std::env::temp_dir().join(format!(
            "sshtrace-test-prometheus-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the Prometheus directory");
        let config = CONFIG
            .replace("RULES", &alert_rules().display().to_string())
            .replace("TARGET", &target.to_string());
        fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let web = free_address();
        let log = fs::File::create(dir.join("prometheus.log")).expect("prometheus.log");
        let child = Command::new(PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut prometheus = Self { child, dir, web };
        crate::wait_for("Prometheus to answer", Duration::from_secs(30), || {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited ({status}): {}", prometheus.log());
            }
            get(prometheus.web, "/-/ready")
                .ok()
                .filter(|(status, _)| *status == 200)
                .map(drop)
        });
        prometheus
    }

    /// `data` of an API answer (`/api/v1/...`), or what went wrong.
    pub fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = get(self.web, path).map_err(|e| e.to_string())?;
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}, {e}: {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("HTTP {status}: {body}"));
        }
        Ok(answer["data"].clone())
    }

    /// The result vector of an instant query.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encoded(expr)))?;
        data["result"]
            .as_array()
            .cloned()
            .ok_or_else(|| format!("no result vector: {data}"))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The value of one sample of a query result (`[time, "value"]`).
pub fn sample_value(sample: &Value) -> Option<f64> {
    sample["value"][1].as_str()?.parse().ok()
}

/// `GET path` over HTTP/1.0: the status and the body.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head: {answer}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status: {head}")))?;
    Ok((status, body.to_owned()))
}

/// Every byte but the unreserved ones as `%XX`, for a query parameter.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
