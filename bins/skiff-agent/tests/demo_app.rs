//! `skiff-agent demo-app` as a process, asked by curl (HTTP/1.1 and h2c prior knowledge), with
//! its stdout access log parsed as nginx's `combined` + `"$http_x_forwarded_for"` format.
//! Loopback only.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use regex::Regex;

/// A running demo app; killed on drop.
struct App {
    child: Child,
    addrs: Vec<SocketAddr>,
    log: mpsc::Receiver<String>,
}

impl App {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Result<App> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff-agent"));
        cmd.arg("demo-app")
            .args(args)
            .env_remove("POD_NAME")
            .env_remove("VERSION")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawning skiff-agent demo-app")?;
        let stderr = child.stderr.take().context("stderr")?;
        let stdout: ChildStdout = child.stdout.take().context("stdout")?;
        let (log_tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = log_tx.send(line);
            }
        });
        // The startup log names each listening address (`addr=...`).
        let want = args
            .iter()
            .position(|a| *a == "--port" || *a == "-p")
            .and_then(|i| args.get(i + 1))
            .map_or(1, |p| p.split(',').count());
        let (addr_tx, addr_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("demo-app: {line}");
                if let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = addr_tx.send(addr);
                }
            }
        });
        let mut addrs = Vec::new();
        while addrs.len() < want {
            match addr_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(a) => addrs.push(a),
                Err(_) => bail!(
                    "demo-app did not report {want} listening addresses: {:?}",
                    child.try_wait()
                ),
            }
        }
        Ok(App { child, addrs, log })
    }

    /// `http://127.0.0.1:PORT` of the first listener.
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addrs[0].port())
    }

    fn next_log(&self) -> Result<String> {
        self.log
            .recv_timeout(Duration::from_secs(5))
            .context("no access-log line on stdout")
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!("curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One access-log line, parsed as nginx writes `log_format main`.
#[derive(Debug)]
struct LogLine {
    remote_addr: String,
    time: String,
    request: String,
    status: u16,
    bytes: u64,
    referer: String,
    user_agent: String,
    x_forwarded_for: String,
}

fn parse_log(line: &str) -> Result<LogLine> {
    let re = Regex::new(
        r#"^(\S+) - - \[(\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "([^"]*)" (\d{3}) (\d+) "([^"]*)" "([^"]*)" "([^"]*)"$"#,
    )?;
    let c = re
        .captures(line)
        .with_context(|| format!("not nginx's log format: {line:?}"))?;
    Ok(LogLine {
        remote_addr: c[1].to_owned(),
        time: c[2].to_owned(),
        request: c[3].to_owned(),
        status: c[4].parse()?,
        bytes: c[5].parse()?,
        referer: c[6].to_owned(),
        user_agent: c[7].to_owned(),
        x_forwarded_for: c[8].to_owned(),
    })
}

fn curl_ua() -> Result<String> {
    let v = curl(&["--version"])?;
    let version = v.split_whitespace().nth(1).context("curl version")?;
    Ok(format!("curl/{version}"))
}

#[test]
fn http1_get_head_and_the_access_log() -> Result<()> {
    let app = App::start(
        &[
            "--port",
            "0",
            "--address",
            "127.0.0.1",
            "--name",
            "nginx-deployment-7fc7f5758-46mzh",
            "--version",
            "v1",
        ],
        &[],
    )?;
    let body = curl(&[&app.url("/")])?;
    assert!(body.contains("<title>Welcome to nginx!</title>"), "{body}");
    assert!(
        body.contains("demo v1 from nginx-deployment-7fc7f5758-46mzh"),
        "{body}"
    );
    let get = parse_log(&app.next_log()?)?;
    assert_eq!(get.remote_addr, "127.0.0.1");
    assert_eq!(get.request, "GET / HTTP/1.1");
    assert_eq!((get.status, get.bytes), (200, body.len() as u64));
    assert_eq!(get.user_agent, curl_ua()?);
    assert_eq!((get.referer.as_str(), get.x_forwarded_for.as_str()), ("-", "-"));
    assert!(get.time.ends_with(" +0000"), "{}", get.time);

    // `curl -sI`, as in the seed: headers only, Content-Length of the GET body.
    let head = curl(&["-I", &app.url("/")])?;
    let head_lc = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head_lc.contains("server: skiff-demo-app\r\n"), "{head}");
    assert!(
        head_lc.contains(&format!("content-length: {}\r\n", body.len())),
        "{head}"
    );
    assert!(head_lc.contains("x-demo-version: v1\r\n"), "{head}");
    let line = app.next_log()?;
    let log = parse_log(&line)?;
    assert_eq!(
        (log.request.as_str(), log.status, log.bytes),
        ("HEAD / HTTP/1.1", 200, 0),
        "{line}"
    );

    // Referer, X-Forwarded-For and a quote to escape, like nginx.
    curl(&[
        "-o",
        "/dev/null",
        "-e",
        "http://ref/",
        "-H",
        "X-Forwarded-For: 198.18.0.9",
        "-A",
        "a\"b",
        &app.url("/?q=1"),
    ])?;
    let log = parse_log(&app.next_log()?)?;
    assert_eq!(log.request, "GET /?q=1 HTTP/1.1");
    assert_eq!(log.referer, "http://ref/");
    assert_eq!(log.x_forwarded_for, "198.18.0.9");
    assert_eq!(log.user_agent, "a\\x22b");
    Ok(())
}

#[test]
fn h2c_prior_knowledge() -> Result<()> {
    let app = App::start(
        &[
            "-p",
            "0",
            "--address",
            "127.0.0.1",
            "--name",
            "canary-v2-x",
            "--version",
            "v2",
        ],
        &[],
    )?;
    let out = curl(&[
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_version} %{http_code}",
        &app.url("/"),
    ])?;
    assert!(out.contains("demo v2 from canary-v2-x"), "{out}");
    assert!(out.ends_with("\n2 200"), "{out}");
    let log = parse_log(&app.next_log()?)?;
    assert_eq!((log.request.as_str(), log.status), ("GET / HTTP/2.0", 200));

    let head = curl(&["--http2-prior-knowledge", "-I", &app.url("/")])?;
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    let log = parse_log(&app.next_log()?)?;
    assert_eq!((log.request.as_str(), log.bytes), ("HEAD / HTTP/2.0", 0));

    let status = curl(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &app.url("/status/503"),
    ])?;
    assert_eq!(status, "503");
    assert_eq!(parse_log(&app.next_log()?)?.status, 503);
    Ok(())
}

#[test]
fn httpbin_paths() -> Result<()> {
    let app = App::start(
        &["--port", "0", "--address", "127.0.0.1"],
        &[("POD_NAME", "httpbin-1"), ("VERSION", "v3")],
    )?;
    let code = |path: &str| curl(&["-o", "/dev/null", "-w", "%{http_code}", &app.url(path)]);
    assert_eq!(code("/status/503")?, "503");
    assert_eq!(code("/status/418")?, "418");
    assert_eq!(code("/status/abc")?, "400");
    assert_eq!(code("/nope")?, "404");
    assert!(
        curl(&[&app.url("/")])?.contains("demo v3 from httpbin-1"),
        "defaults from POD_NAME and VERSION"
    );

    let headers: serde_json::Value =
        serde_json::from_str(&curl(&["-H", "X-Test: 1", &app.url("/headers")])?)?;
    assert_eq!(headers["headers"]["X-Test"], "1");
    assert_eq!(
        headers["headers"]["Host"],
        format!("127.0.0.1:{}", app.addrs[0].port())
    );
    let ip: serde_json::Value = serde_json::from_str(&curl(&[&app.url("/ip")])?)?;
    assert_eq!(ip["origin"], "127.0.0.1");

    let started = Instant::now();
    let delay: serde_json::Value = serde_json::from_str(&curl(&[&app.url("/delay/0.3")])?)?;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(delay["delay"], 0.3);
    Ok(())
}

#[test]
fn status_cycle_fails_then_recovers_in_turn() -> Result<()> {
    let app = App::start(
        &[
            "--port",
            "0",
            "--address",
            "127.0.0.1",
            "--status-cycle",
            "503,503,200",
        ],
        &[],
    )?;
    let codes: Vec<String> = (0..6)
        .map(|_| curl(&["-o", "/dev/null", "-w", "%{http_code}", &app.url("/")]))
        .collect::<Result<_>>()?;
    assert_eq!(codes, ["503", "503", "200", "503", "503", "200"]);
    // Other paths keep their own answers and do not advance the cycle.
    let other = curl(&["-o", "/dev/null", "-w", "%{http_code}", &app.url("/headers")])?;
    assert_eq!(other, "200");
    let next = curl(&["-o", "/dev/null", "-w", "%{http_code}", &app.url("/")])?;
    assert_eq!(next, "503");
    Ok(())
}

#[test]
fn several_ports_dual_stack_and_sigterm() -> Result<()> {
    // No --address: [::] taking IPv4 too; the log shows the IPv4 peer as nginx would.
    let mut app = App::start(&["--port", "0,0", "--name", "n"], &[])?;
    assert_eq!(app.addrs.len(), 2);
    for addr in app.addrs.clone() {
        let body = curl(&[&format!("http://127.0.0.1:{}/", addr.port())])?;
        assert!(body.contains("demo from n"), "{body}");
        assert_eq!(parse_log(&app.next_log()?)?.remote_addr, "127.0.0.1");
    }
    let pid = app.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status()?;
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = app.child.try_wait()? {
            assert_eq!(status.code(), Some(0), "exits cleanly on SIGTERM");
            break;
        }
        assert!(Instant::now() < deadline, "demo-app ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn bad_flags_are_refused() -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff-agent"))
        .args(["demo-app", "--status", "99"])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--status"),
        "{out:?}"
    );
    Ok(())
}
