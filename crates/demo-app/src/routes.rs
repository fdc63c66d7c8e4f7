//! What each path answers: a pure decision over the request, so every route is tested without a
//! socket. Paths follow httpbin where the walkthroughs need a behaviour (`/status/503` for fault
//! and retry demos, `/delay/2` for timeouts, `/headers` to show what the sidecar added).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use crate::Config;

/// `/delay/N` waits at most this long (httpbin's bound too), so a typo cannot hold a connection
/// for an hour.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// The answer to one request, before the server writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
    /// Wait this long before answering (`/delay`).
    pub delay: Duration,
}

impl Reply {
    fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    fn json(value: &serde_json::Value) -> Self {
        let mut body = serde_json::to_string_pretty(value).unwrap_or_default();
        body.push('\n');
        Self::new(StatusCode::OK, "application/json", body)
    }

    fn text(status: StatusCode, text: &str) -> Self {
        Self::new(status, "text/plain; charset=utf-8", format!("{text}\n"))
    }
}

/// The request as the routes see it.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// `:authority` of an HTTP/2 request (which has no Host header).
    pub authority: Option<&'a str>,
    pub peer: IpAddr,
}

/// Decides the reply; `pick` chooses among `/status/500,200` alternatives (random in the
/// server, fixed in tests).
pub fn route(config: &Config, req: &RequestView<'_>, pick: impl FnOnce(usize) -> usize) -> Reply {
    if !matches!(*req.method, Method::GET | Method::HEAD) && !req.path.starts_with("/status/") {
        return Reply::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let path = req.path;
    match path {
        "/" | "/index.html" => {
            let (content_type, body) = match &config.body {
                Some(body) if body.trim_start().starts_with('<') => ("text/html", body.clone()),
                Some(body) => ("text/plain; charset=utf-8", body.clone()),
                None => ("text/html", default_page(config)),
            };
            Reply::new(config.status, content_type, body)
        }
        "/headers" => Reply::json(&serde_json::json!({ "headers": headers_json(req) })),
        "/ip" => Reply::json(&serde_json::json!({ "origin": req.peer.to_string() })),
        _ => {
            if let Some(codes) = path.strip_prefix("/status/") {
                return status(codes, pick);
            }
            if let Some(secs) = path.strip_prefix("/delay/") {
                let Some(delay) = secs.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0) else {
                    return Reply::text(
                        StatusCode::BAD_REQUEST,
                        "invalid delay: give seconds, e.g. /delay/2",
                    );
                };
                let delay = Duration::from_secs_f64(delay.min(MAX_DELAY.as_secs_f64()));
                let mut reply = Reply::json(&serde_json::json!({
                    "delay": delay.as_secs_f64(),
                    "headers": headers_json(req),
                    "origin": req.peer.to_string(),
                }));
                reply.delay = delay;
                return reply;
            }
            Reply::text(StatusCode::NOT_FOUND, "not found")
        }
    }
}

/// `/status/503`, or httpbin's `/status/500,200` (one of them, chosen by `pick`).
fn status(codes: &str, pick: impl FnOnce(usize) -> usize) -> Reply {
    let parsed: Option<Vec<StatusCode>> = codes
        .split(',')
        .map(|c| {
            c.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (200..=599).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
        })
        .collect();
    match parsed {
        Some(codes) if !codes.is_empty() => {
            let code = codes[pick(codes.len()) % codes.len()];
            Reply::new(code, "text/html; charset=utf-8", Bytes::new())
        }
        _ => Reply::text(
            StatusCode::BAD_REQUEST,
            "invalid status code: give 200-599, e.g. /status/503",
        ),
    }
}

/// httpbin's `/headers` shape: Title-Case names, repeated headers joined with `,`.
fn headers_json(req: &RequestView<'_>) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(title_case(name.as_str()))
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    if let Some(authority) = req.authority {
        out.entry("Host".to_owned())
            .or_insert_with(|| authority.to_owned());
    }
    out
}

fn title_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The line that tells canaries apart: `demo v1 from nginx-deployment-7fc7f5758-46mzh`.
pub fn identity(config: &Config) -> String {
    match &config.version {
        Some(v) => format!("demo {v} from {}", config.name),
        None => format!("demo from {}", config.name),
    }
}

/// nginx's welcome page title (examples grep for it) with the identity line; it says what it
/// really is, too.
fn default_page(config: &Config) -> String {
    format!(
        "<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n</head>\n<body>\n\
         <h1>Welcome to nginx!</h1>\n<p>{}</p>\n\
         <p><em>Served by skiff-demo-app, standing in for the nginx image in Skiff's local mesh.</em></p>\n\
         </body>\n</html>\n",
        html_escape(&identity(config))
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            ports: vec![80],
            name: "nginx-deployment-7fc7f5758-46mzh".into(),
            version: Some("v1".into()),
            body: None,
            status: StatusCode::OK,
            status_cycle: Vec::new(),
            address: None,
        }
    }

    fn get(config: &Config, method: Method, path: &str, headers: &HeaderMap) -> Reply {
        let req = RequestView {
            method: &method,
            path,
            headers,
            authority: None,
            peer: "127.0.0.6".parse().unwrap(),
        };
        route(config, &req, |_| 1)
    }

    fn body(r: &Reply) -> String {
        String::from_utf8(r.body.to_vec()).unwrap()
    }

    #[test]
    fn root_shows_identity() {
        let h = HeaderMap::new();
        let r = get(&config(), Method::GET, "/", &h);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.content_type, "text/html");
        assert!(body(&r).contains("<title>Welcome to nginx!</title>"));
        assert!(body(&r).contains("<p>demo v1 from nginx-deployment-7fc7f5758-46mzh</p>"));
        let mut c = config();
        c.version = None;
        c.status = StatusCode::SERVICE_UNAVAILABLE;
        let r = get(&c, Method::GET, "/index.html", &h);
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(&r).contains("<p>demo from nginx-deployment-7fc7f5758-46mzh</p>"));
        c.body = Some("hello\n".into());
        let r = get(&c, Method::GET, "/", &h);
        assert_eq!(
            (body(&r).as_str(), r.content_type),
            ("hello\n", "text/plain; charset=utf-8")
        );
    }

    #[test]
    fn status_codes() {
        let h = HeaderMap::new();
        assert_eq!(get(&config(), Method::GET, "/status/503", &h).status, 503);
        assert_eq!(get(&config(), Method::POST, "/status/201", &h).status, 201);
        assert_eq!(get(&config(), Method::GET, "/status/500,200", &h).status, 200);
        for bad in [
            "/status/99",
            "/status/600",
            "/status/x",
            "/status/",
            "/status/500,",
        ] {
            assert_eq!(get(&config(), Method::GET, bad, &h).status, 400, "{bad}");
        }
    }

    #[test]
    fn delay_is_bounded() {
        let h = HeaderMap::new();
        assert_eq!(
            get(&config(), Method::GET, "/delay/1.5", &h).delay,
            Duration::from_millis(1500)
        );
        assert_eq!(get(&config(), Method::GET, "/delay/3600", &h).delay, MAX_DELAY);
        for bad in ["/delay/-1", "/delay/NaN", "/delay/inf", "/delay/x"] {
            assert_eq!(get(&config(), Method::GET, bad, &h).status, 400, "{bad}");
        }
    }

    #[test]
    fn headers_and_ip_like_httpbin() {
        let mut h = HeaderMap::new();
        h.insert("user-agent", "curl/8".parse().unwrap());
        h.append("x-b3-traceid", "a".parse().unwrap());
        h.append("x-b3-traceid", "b".parse().unwrap());
        let r = get(&config(), Method::GET, "/headers", &h);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"headers": {"User-Agent": "curl/8", "X-B3-Traceid": "a,b"}})
        );
        let r = get(&config(), Method::GET, "/ip", &h);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v, serde_json::json!({"origin": "127.0.0.6"}));
    }

    #[test]
    fn other_paths_and_methods() {
        let h = HeaderMap::new();
        assert_eq!(get(&config(), Method::GET, "/nope", &h).status, 404);
        assert_eq!(get(&config(), Method::POST, "/", &h).status, 405);
        assert_eq!(get(&config(), Method::HEAD, "/", &h).status, 200);
    }
}
