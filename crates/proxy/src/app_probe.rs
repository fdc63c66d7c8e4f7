//! Kubernetes probes rewritten by injection. The kubelet cannot reach the app through the
//! capture rules, so injection points its probes at the agent
//! (`:15020/app-health/<container>/readyz`) and hands the originals over in
//! `ISTIO_KUBE_APP_PROBERS`; the agent probes the app over loopback and answers for it, as
//! pilot-agent does.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One original probe.
#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    Http {
        port: u16,
        path: String,
        host: Option<String>,
        headers: Vec<(String, String)>,
        timeout: Duration,
    },
    Tcp {
        port: u16,
        timeout: Duration,
    },
    Unsupported {
        kind: &'static str,
    },
}

/// Parses `ISTIO_KUBE_APP_PROBERS` (URL path → probe). Unknown shapes become `Unsupported` so
/// the probe fails loudly instead of passing.
pub fn parse(json: &str) -> Result<HashMap<String, Probe>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("ISTIO_KUBE_APP_PROBERS: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("ISTIO_KUBE_APP_PROBERS: expected an object of URL path → probe")?;
    let mut out = HashMap::new();
    for (url, p) in obj {
        let timeout = Duration::from_secs(
            p.get("timeoutSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1),
        );
        let port = |o: &Value| -> Result<u16, String> {
            o.get("port")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("ISTIO_KUBE_APP_PROBERS[{url}].port: expected a port number"))
        };
        let probe = if let Some(h) = p.get("httpGet") {
            if h.get("scheme")
                .and_then(Value::as_str)
                .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
            {
                Probe::Unsupported { kind: "HTTPS" }
            } else {
                let headers = h
                    .get("httpHeaders")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|kv| {
                        Some((
                            kv.get("name")?.as_str()?.to_owned(),
                            kv.get("value")?.as_str()?.to_owned(),
                        ))
                    })
                    .collect();
                Probe::Http {
                    port: port(h)?,
                    path: h.get("path").and_then(Value::as_str).unwrap_or("/").to_owned(),
                    host: h.get("host").and_then(Value::as_str).map(str::to_owned),
                    headers,
                    timeout,
                }
            }
        } else if let Some(t) = p.get("tcpSocket") {
            Probe::Tcp {
                port: port(t)?,
                timeout,
            }
        } else if p.get("grpc").is_some() {
            Probe::Unsupported { kind: "gRPC" }
        } else {
            return Err(format!(
                "ISTIO_KUBE_APP_PROBERS[{url}]: expected httpGet, tcpSocket or grpc"
            ));
        };
        out.insert(url.clone(), probe);
    }
    Ok(out)
}

/// The probers from the environment, read once.
pub fn from_env() -> &'static HashMap<String, Probe> {
    static PROBERS: OnceLock<HashMap<String, Probe>> = OnceLock::new();
    PROBERS.get_or_init(|| match std::env::var("ISTIO_KUBE_APP_PROBERS") {
        Ok(j) if !j.trim().is_empty() => parse(&j).unwrap_or_else(|e| {
            tracing::error!("{e}");
            HashMap::new()
        }),
        _ => HashMap::new(),
    })
}

/// Runs a probe against the app on loopback; the status is what the kubelet will see.
pub async fn run(probe: &Probe) -> (StatusCode, String) {
    match probe {
        Probe::Tcp { port, timeout } => {
            match tokio::time::timeout(*timeout, TcpStream::connect(("127.0.0.1", *port))).await {
                Ok(Ok(_)) => (StatusCode::OK, String::new()),
                Ok(Err(e)) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("tcp probe of port {port}: {e}\n"),
                ),
                Err(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("tcp probe of port {port}: timed out\n"),
                ),
            }
        }
        Probe::Http {
            port,
            path,
            host,
            headers,
            timeout,
        } => {
            let addr = format!("127.0.0.1:{port}");
            match tokio::time::timeout(*timeout, http_get(&addr, path, host.as_deref(), headers)).await {
                // The kubelet treats 200..400 as success; pass the app's code through.
                Ok(Ok(code)) => {
                    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    if (200..400).contains(&code) {
                        (status, String::new())
                    } else {
                        (status, format!("app answered {code}\n"))
                    }
                }
                Ok(Err(e)) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("http probe of port {port}: {e}\n"),
                ),
                Err(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("http probe of port {port}: timed out\n"),
                ),
            }
        }
        Probe::Unsupported { kind } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{kind} app probes are not supported by skiff-agent yet\n"),
        ),
    }
}

/// A single HTTP/1.1 GET; returns the status code. Kept minimal on purpose: the probe needs
/// only the status line.
pub async fn http_get(
    addr: &str,
    path: &str,
    host: Option<&str>,
    headers: &[(String, String)],
) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr).await?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kube-probe/1.28\r\nConnection: close\r\n",
        host.unwrap_or(addr)
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 1024];
    let mut n = 0;
    loop {
        let m = s.read(&mut buf[n..]).await?;
        n += m;
        let mut hdrs = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut hdrs);
        match resp.parse(&buf[..n]) {
            Ok(_) if resp.code.is_some() => return Ok(resp.code.unwrap_or(500)),
            Ok(_) if m > 0 && n < buf.len() => continue,
            Err(httparse::Error::TooManyHeaders) => {
                // The status line parsed; that is all we need.
                return std::str::from_utf8(&buf[9..12.min(n)])
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| std::io::Error::other("unreadable status line"));
            }
            _ => return Err(std::io::Error::other("unreadable HTTP response")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_injected_probers() {
        let p = parse(
            r#"{"/app-health/app/readyz": {"httpGet": {"path": "/ready", "port": 8080, "httpHeaders": [{"name": "X", "value": "1"}]}, "timeoutSeconds": 2},
                "/app-health/app/livez": {"tcpSocket": {"port": 9000}},
                "/app-health/grpc/livez": {"grpc": {"port": 7000}},
                "/app-health/s/readyz": {"httpGet": {"path": "/", "port": 443, "scheme": "HTTPS"}}}"#,
        )
        .unwrap();
        assert_eq!(
            p["/app-health/app/readyz"],
            Probe::Http {
                port: 8080,
                path: "/ready".into(),
                host: None,
                headers: vec![("X".into(), "1".into())],
                timeout: Duration::from_secs(2)
            }
        );
        assert_eq!(
            p["/app-health/app/livez"],
            Probe::Tcp {
                port: 9000,
                timeout: Duration::from_secs(1)
            }
        );
        assert_eq!(p["/app-health/grpc/livez"], Probe::Unsupported { kind: "gRPC" });
        assert_eq!(p["/app-health/s/readyz"], Probe::Unsupported { kind: "HTTPS" });
    }

    #[test]
    fn bad_probers_name_the_field() {
        let e = parse(r#"{"/app-health/a/livez": {"tcpSocket": {"port": "http"}}}"#).unwrap_err();
        assert!(e.contains("/app-health/a/livez") && e.contains("port"), "{e}");
        assert!(parse("[1]").is_err());
        assert!(parse("{").is_err());
    }

    #[tokio::test]
    async fn probes_a_real_app() {
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = app.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = app.accept().await.unwrap();
                let mut b = [0u8; 512];
                let n = s.read(&mut b).await.unwrap();
                let req = String::from_utf8_lossy(&b[..n]).to_string();
                let code = if req.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let t = Duration::from_secs(1);
        let ok = Probe::Http {
            port,
            path: "/ok".into(),
            host: None,
            headers: vec![],
            timeout: t,
        };
        assert_eq!(run(&ok).await.0, StatusCode::OK);
        let bad = Probe::Http {
            port,
            path: "/no".into(),
            host: None,
            headers: vec![],
            timeout: t,
        };
        assert_eq!(run(&bad).await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(run(&Probe::Tcp { port, timeout: t }).await.0, StatusCode::OK);
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert_eq!(
            run(&Probe::Tcp {
                port: closed,
                timeout: t
            })
            .await
            .0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
