//! Test peers shared by the traffic-management tests: a recording HTTP/1.1 upstream whose
//! answers can be steered per request (headers) or per endpoint (a default status), and small
//! HTTP/TLS clients that are not Skiff's own code (raw sockets, curl).

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the recorder received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub name: String,
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body_len: usize,
}

impl Seen {
    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "name": self.name,
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body_len": self.body_len,
        }))
        .unwrap()
    }

    fn from_json(b: &[u8]) -> Option<Seen> {
        let v: serde_json::Value = serde_json::from_slice(b).ok()?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        Some(Seen {
            name: s("name")?,
            method: s("method")?,
            path: s("path")?,
            headers: v
                .get("headers")?
                .as_object()?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                .collect(),
            body_len: v.get("body_len")?.as_u64()? as usize,
        })
    }
}

/// An upstream that records every request and answers with JSON describing it.
///
/// Steering headers: `x-rec-status: 503`, `x-rec-delay-ms: 300`, `x-rec-fail-first: N` with
/// `x-rec-key: K` (503 for the first N requests of key K), `x-rec-delay-first: N` (delay only
/// the first N requests of the key), `x-rec-header: name:value` (added to the answer).
/// `set_status` changes the default status of this endpoint (an endpoint that went bad).
pub struct Recorder {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    pub connections: Arc<AtomicU64>,
}

type Keys = Arc<Mutex<BTreeMap<String, u64>>>;

impl Recorder {
    pub fn start(name: &str) -> Recorder {
        Recorder::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn start_on(name: &str, addr: SocketAddr) -> Recorder {
        let listener = TcpListener::bind(addr).expect("recorder bind");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let keys: Keys = Arc::default();
        let (s, st, sp, c, n) = (
            seen.clone(),
            status.clone(),
            stop.clone(),
            connections.clone(),
            name.to_string(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_nodelay(true);
                c.fetch_add(1, Relaxed);
                let (s, st, n, keys) = (s.clone(), st.clone(), n.clone(), keys.clone());
                std::thread::spawn(move || serve(conn, &n, &s, &st, &keys));
            }
        });
        Recorder {
            addr,
            name: name.into(),
            seen,
            status,
            stop,
            connections,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set_status(&self, code: u16) {
        self.status.store(code, Relaxed);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }

    /// Waits up to `timeout` for at least `n` requests.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.seen();
            if s.len() >= n || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(conn: TcpStream, name: &str, seen: &Mutex<Vec<Seen>>, status: &AtomicU16, keys: &Keys) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut w = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = match (parts.next(), parts.next()) {
            (Some(m), Some(p)) => (m.to_string(), p.to_string()),
            _ => return,
        };
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim().to_string();
                headers
                    .entry(k)
                    .and_modify(|old: &mut String| {
                        old.push(',');
                        old.push_str(&v);
                    })
                    .or_insert(v);
            }
        }
        let body = read_body(&mut r, &headers);
        let h = |n: &str| headers.get(n).cloned();
        let key = h("x-rec-key").unwrap_or_default();
        let nth = {
            let mut k = keys.lock().unwrap();
            let e = k.entry(key).or_insert(0);
            *e += 1;
            *e
        };
        // Recorded on arrival: an attempt the proxy gave up on still counts, at the time it came.
        let record = Seen {
            name: name.into(),
            method,
            path,
            headers: headers.clone(),
            body_len: body.len(),
        };
        seen.lock().unwrap().push(record.clone());
        let delay_first: Option<u64> = h("x-rec-delay-first").and_then(|v| v.parse().ok());
        if let Some(ms) = h("x-rec-delay-ms").and_then(|v| v.parse::<u64>().ok()) {
            if delay_first.is_none_or(|n| nth <= n) {
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        let mut code = h("x-rec-status")
            .and_then(|v| v.parse().ok())
            .unwrap_or(status.load(Relaxed));
        if h("x-rec-fail-first")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| nth <= n)
        {
            code = 503;
        }
        let payload = record.to_json();
        let mut extra = String::new();
        if let Some(x) = h("x-rec-header") {
            if let Some((k, v)) = x.split_once(':') {
                extra.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        let close = h("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let head = format!(
            "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\nx-rec-name: {name}\r\n{extra}content-length: {}\r\n{}\r\n",
            payload.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        let mut out = head.into_bytes();
        out.extend_from_slice(&payload);
        if w.write_all(&out).is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

fn read_body(r: &mut BufReader<TcpStream>, headers: &BTreeMap<String, String>) -> Vec<u8> {
    if let Some(n) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut b = vec![0u8; n];
        let _ = r.read_exact(&mut b);
        return b;
    }
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        let mut out = Vec::new();
        loop {
            let mut size = String::new();
            if r.read_line(&mut size).unwrap_or(0) == 0 {
                break;
            }
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            if n == 0 {
                let mut end = String::new();
                let _ = r.read_line(&mut end);
                break;
            }
            let mut b = vec![0u8; n + 2];
            if r.read_exact(&mut b).is_err() {
                break;
            }
            out.extend_from_slice(&b[..n]);
        }
        return out;
    }
    Vec::new()
}

/// A raw HTTP/1.1 exchange over a fresh connection (a client that is not Skiff's).
pub struct RawReply {
    pub status: u16,
    /// Lowercased names, in order, repeated names kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub local: SocketAddr,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn seen(&self) -> Option<Seen> {
        Seen::from_json(&self.body)
    }
}

/// Sends one request (`Connection: close`) and reads the whole answer.
pub fn raw_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<RawReply, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("connection: close\r\n\r\n");
    // One write: head and body in separate segments would wait on Nagle + delayed ACK.
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let _ = s.set_nodelay(true);
    s.write_all(&bytes).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    parse_reply(&out, local)
}

fn parse_reply(out: &[u8], local: SocketAddr) -> Result<RawReply, String> {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end in {:?}", String::from_utf8_lossy(out)))?;
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("bad status line")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = out[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        let mut dechunked = Vec::new();
        let mut rest = &body[..];
        while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..i]).trim(), 16).unwrap_or(0);
            if n == 0 || rest.len() < i + 2 + n {
                break;
            }
            dechunked.extend_from_slice(&rest[i + 2..i + 2 + n]);
            rest = &rest[(i + 4 + n).min(rest.len())..];
        }
        body = dechunked;
    }
    Ok(RawReply {
        status,
        headers,
        body,
        local,
    })
}

/// A self-signed CA and a leaf certificate for `names` signed by it, made with Debian's
/// openssl in `dir`. Returns (ca.pem, leaf.pem, leaf.key).
pub fn make_certs(dir: &std::path::Path, tag: &str, names: &[&str]) -> (String, String, String) {
    std::fs::create_dir_all(dir).unwrap();
    let p = |f: &str| dir.join(format!("{tag}-{f}")).display().to_string();
    let (ca_key, ca, key, csr, leaf, ext) = (
        p("ca.key"),
        p("ca.pem"),
        p("leaf.key"),
        p("leaf.csr"),
        p("leaf.pem"),
        p("ext.cnf"),
    );
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        &format!("/CN={tag} test CA"),
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        &format!("/CN={}", names[0]),
    ]);
    let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    std::fs::write(&ext, format!("subjectAltName={}\n", sans.join(","))).unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &leaf,
        "-days",
        "2",
        "-extfile",
        &ext,
    ]);
    (
        std::fs::read_to_string(&ca).unwrap(),
        std::fs::read_to_string(&leaf).unwrap(),
        std::fs::read_to_string(&key).unwrap(),
    )
}

/// `curl` over TLS to 127.0.0.1:`port` as `https://host/path`, trusting `ca_file`.
/// Returns (status, headers+body text, negotiated HTTP version).
pub fn curl_https(port: u16, host: &str, path: &str, ca_file: &str, http2: bool) -> (u16, String, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-i",
            "--max-time",
            "10",
            if http2 { "--http2" } else { "--http1.1" },
            "--resolve",
            &format!("{host}:{port}:127.0.0.1"),
            "--cacert",
            ca_file,
            "-w",
            "\n%{http_code} %{http_version}",
            &format!("https://{host}:{port}{path}"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let last = text.lines().last().unwrap_or("").to_string();
    let mut it = last.split(' ');
    let code = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let version = it.next().unwrap_or("").to_string();
    if code == 0 {
        return (0, String::from_utf8_lossy(&out.stderr).into_owned(), version);
    }
    (code, text, version)
}
