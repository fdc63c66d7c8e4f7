//! Differential tests: the same Envoy bootstrap loaded by real Envoy and by Skiff, the same
//! requests sent to both, and the answers compared — status, local-reply body, the headers the
//! upstream saw, the headers the client got, and the access-log fields (times aside).
//! Envoy is the reference: a difference here is a Skiff bug unless listed as deliberate.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use testkit::http::{free_port, Client, Echo, Reply};
use testkit::proxy::{Kind, ProxyProc};

const BIN: &str = env!("CARGO_BIN_EXE_skiff-agent");

/// Access-log format with every field the comparison looks at (no times, no request ids).
const LOG: &str = "%RESPONSE_CODE%\\t%RESPONSE_FLAGS%\\t%RESPONSE_CODE_DETAILS%\\t%ROUTE_NAME%\\t%UPSTREAM_CLUSTER%\\t%UPSTREAM_HOST%\\t%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\\t%REQ(:AUTHORITY)%\\t%PROTOCOL%\\t%BYTES_RECEIVED%\\t%BYTES_SENT%\\t%REQ(X-FORWARDED-FOR)%\\t%UPSTREAM_TRANSPORT_FAILURE_REASON%\\n";

fn bootstrap(listen: u16, admin: u16, a: &Echo, b: &Echo, dead: u16) -> String {
    let ep = |port: u16| {
        format!("{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}")
    };
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: diff
          internal_address_config: {{ cidr_ranges: [{{ address_prefix: 127.0.0.1, prefix_len: 32 }}] }}
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {{ text_format_source: {{ inline_string: "{LOG}" }} }}
          route_config:
            name: diff_routes
            validate_clusters: false
            request_headers_to_add:
            - header: {{ key: x-level, value: config }}
            response_headers_to_add:
            - header: {{ key: x-resp-level, value: config }}
            virtual_hosts:
            - name: prefix
              domains: ["prefix.test"]
              routes:
              - name: all
                match: {{ prefix: "/" }}
                route: {{ cluster: a }}
            - name: rewrite
              domains: ["rewrite.test"]
              routes:
              - name: nginx
                match: {{ prefix: "/nginx" }}
                route: {{ cluster: a, prefix_rewrite: "/" }}
            - name: regex
              domains: ["regex.test"]
              routes:
              - name: users
                match: {{ safe_regex: {{ regex: "/users/[0-9]+" }} }}
                route:
                  cluster: a
                  regex_rewrite: {{ pattern: {{ regex: "^/users/([0-9]+)$" }}, substitution: "/u/\\1" }}
            - name: exact
              domains: ["exact.test"]
              routes:
              - name: exact
                match: {{ path: "/exact" }}
                route: {{ cluster: a }}
            - name: headers
              domains: ["headers.test"]
              routes:
              - name: v2
                match: {{ prefix: "/", headers: [{{ name: user, string_match: {{ exact: zhongmingmao }} }}] }}
                route: {{ cluster: b }}
              - name: v1
                match: {{ prefix: "/" }}
                route: {{ cluster: a }}
            - name: query
              domains: ["query.test"]
              routes:
              - name: debug
                match: {{ prefix: "/", query_parameters: [{{ name: debug, string_match: {{ exact: "1" }} }}] }}
                route: {{ cluster: b }}
              - name: plain
                match: {{ prefix: "/" }}
                route: {{ cluster: a }}
            - name: redirect
              domains: ["redirect.test"]
              routes:
              - name: r
                match: {{ prefix: "/old" }}
                redirect: {{ https_redirect: true, prefix_rewrite: "/new", host_redirect: "example.com" }}
            - name: direct
              domains: ["direct.test"]
              routes:
              - name: d
                match: {{ prefix: "/" }}
                direct_response: {{ status: 418, body: {{ inline_string: "short and stout" }} }}
            - name: hostrewrite
              domains: ["host.test"]
              routes:
              - name: h
                match: {{ prefix: "/" }}
                route: {{ cluster: a, host_rewrite_literal: "rewritten.example" }}
            - name: mutations
              domains: ["mutate.test"]
              request_headers_to_add:
              - header: {{ key: x-level, value: vhost }}
              - header: {{ key: x-vhost, value: "1" }}
              response_headers_to_add:
              - header: {{ key: x-resp-level, value: vhost }}
              routes:
              - name: m
                match: {{ prefix: "/" }}
                request_headers_to_add:
                - header: {{ key: x-level, value: route }}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
                - header: {{ key: x-added, value: "yes" }}
                request_headers_to_remove: ["x-remove-me"]
                response_headers_to_add:
                - header: {{ key: x-resp-route, value: "1" }}
                response_headers_to_remove: ["x-echo-name"]
                route: {{ cluster: a }}
            - name: timeout
              domains: ["timeout.test"]
              routes:
              - name: t
                match: {{ prefix: "/" }}
                route: {{ cluster: a, timeout: 0.3s }}
            - name: dead
              domains: ["dead.test"]
              routes:
              - name: d
                match: {{ prefix: "/" }}
                route: {{ cluster: dead }}
            - name: empty
              domains: ["empty.test"]
              routes:
              - name: e
                match: {{ prefix: "/" }}
                route: {{ cluster: empty }}
            - name: nocluster
              domains: ["nocluster.test"]
              routes:
              - name: nc
                match: {{ prefix: "/" }}
                route: {{ cluster: missing }}
            - name: retry
              domains: ["retry.test"]
              routes:
              - name: r
                match: {{ prefix: "/" }}
                route:
                  cluster: a
                  retry_policy: {{ retry_on: "5xx", num_retries: 2 }}
            - name: suffixwild
              domains: ["*.wild.test"]
              routes:
              - name: w
                match: {{ prefix: "/" }}
                route: {{ cluster: b }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: a
    connect_timeout: 1s
    load_assignment: {{ cluster_name: a, endpoints: [{{ lb_endpoints: [{ea}] }}] }}
  - name: b
    connect_timeout: 1s
    load_assignment: {{ cluster_name: b, endpoints: [{{ lb_endpoints: [{eb}] }}] }}
  - name: dead
    connect_timeout: 1s
    load_assignment: {{ cluster_name: dead, endpoints: [{{ lb_endpoints: [{ed}] }}] }}
  - name: empty
    connect_timeout: 1s
    type: STATIC
"#,
        ea = ep(a.addr.port()),
        eb = ep(b.addr.port()),
        ed = ep(dead),
    )
}

/// One request of the comparison: host, path, extra headers.
struct Case {
    name: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

const CASES: &[Case] = &[
    Case {
        name: "prefix route",
        host: "prefix.test",
        path: "/any/path?x=1",
        headers: &[],
    },
    Case {
        name: "prefix rewrite",
        host: "rewrite.test",
        path: "/nginx/index.html",
        headers: &[],
    },
    Case {
        name: "prefix rewrite exact",
        host: "rewrite.test",
        path: "/nginx",
        headers: &[],
    },
    Case {
        name: "regex route and rewrite",
        host: "regex.test",
        path: "/users/42",
        headers: &[],
    },
    Case {
        name: "regex no match",
        host: "regex.test",
        path: "/users/abc",
        headers: &[],
    },
    Case {
        name: "exact path",
        host: "exact.test",
        path: "/exact",
        headers: &[],
    },
    Case {
        name: "exact path with query",
        host: "exact.test",
        path: "/exact?q=1",
        headers: &[],
    },
    Case {
        name: "exact path mismatch",
        host: "exact.test",
        path: "/exact/",
        headers: &[],
    },
    Case {
        name: "header match",
        host: "headers.test",
        path: "/",
        headers: &[("user", "zhongmingmao")],
    },
    Case {
        name: "header mismatch",
        host: "headers.test",
        path: "/",
        headers: &[("user", "other")],
    },
    Case {
        name: "query match",
        host: "query.test",
        path: "/?debug=1",
        headers: &[],
    },
    Case {
        name: "query mismatch",
        host: "query.test",
        path: "/?debug=0",
        headers: &[],
    },
    Case {
        name: "redirect",
        host: "redirect.test",
        path: "/old/page?keep=1",
        headers: &[],
    },
    Case {
        name: "direct response",
        host: "direct.test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "host rewrite",
        host: "host.test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "header mutations",
        host: "mutate.test",
        path: "/",
        headers: &[("x-remove-me", "1"), ("x-level", "client")],
    },
    Case {
        name: "route timeout",
        host: "timeout.test",
        path: "/",
        headers: &[("x-echo-delay-ms", "1000")],
    },
    Case {
        name: "connect failure",
        host: "dead.test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "no healthy upstream",
        host: "empty.test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "cluster not found",
        host: "nocluster.test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "no route (unknown host)",
        host: "unknown.test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "upstream 503 passed through",
        host: "prefix.test",
        path: "/",
        headers: &[("x-echo-status", "503")],
    },
    Case {
        name: "retry recovers",
        host: "retry.test",
        path: "/",
        headers: &[("x-echo-fail-first", "1"), ("x-echo-key", "k")],
    },
    Case {
        name: "retries exhausted",
        host: "retry.test",
        path: "/",
        headers: &[("x-echo-status", "503")],
    },
    Case {
        name: "x-envoy-max-retries: 0",
        host: "retry.test",
        path: "/",
        headers: &[
            ("x-echo-fail-first", "1"),
            ("x-echo-key", "k0"),
            ("x-envoy-max-retries", "0"),
        ],
    },
    Case {
        name: "host with port",
        host: "prefix.test:80",
        path: "/",
        headers: &[],
    },
    Case {
        name: "suffix wildcard domain",
        host: "a.wild.test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "client x-forwarded-for kept",
        host: "prefix.test",
        path: "/",
        headers: &[("x-forwarded-for", "203.0.113.7")],
    },
    Case {
        name: "client x-request-id kept",
        host: "prefix.test",
        path: "/",
        headers: &[("x-request-id", "client-chosen-id")],
    },
    Case {
        name: "upstream timeout override",
        host: "prefix.test",
        path: "/",
        headers: &[
            ("x-envoy-upstream-rq-timeout-ms", "200"),
            ("x-echo-delay-ms", "1000"),
        ],
    },
    Case {
        name: "timeout override from an internal client",
        host: "prefix.test",
        path: "/",
        headers: &[
            ("x-forwarded-for", "127.0.0.1"),
            ("x-envoy-upstream-rq-timeout-ms", "200"),
            ("x-echo-delay-ms", "1000"),
        ],
    },
    Case {
        name: "x-envoy-max-retries: 0 from an internal client",
        host: "retry.test",
        path: "/",
        headers: &[
            ("x-forwarded-for", "127.0.0.1"),
            ("x-echo-fail-first", "1"),
            ("x-echo-key", "k1"),
            ("x-envoy-max-retries", "0"),
        ],
    },
    Case {
        name: "two x-forwarded-for hops are not internal",
        host: "retry.test",
        path: "/",
        headers: &[
            ("x-forwarded-for", "10.0.0.1, 127.0.0.1"),
            ("x-echo-fail-first", "1"),
            ("x-echo-key", "k2"),
            ("x-envoy-max-retries", "0"),
        ],
    },
];

/// What is compared for one request.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    status: u16,
    /// Local replies' bodies (upstream bodies are the echo's JSON, compared via `upstream_saw`).
    local_body: Option<String>,
    response_headers: BTreeMap<String, String>,
    upstream_saw: Option<BTreeMap<String, String>>,
    upstream_path: Option<String>,
    upstream_name: Option<String>,
}

/// Headers whose values vary by run; only their presence is compared.
const VOLATILE: &[&str] = &[
    "x-request-id",
    "date",
    "x-envoy-upstream-service-time",
    "content-length",
];

fn observe(reply: &Reply) -> Observed {
    let echoed = reply.echoed();
    let mut response_headers = BTreeMap::new();
    for (k, v) in &reply.headers {
        let v = if VOLATILE.contains(&k.as_str()) {
            "<present>".to_string()
        } else {
            v.to_str().unwrap_or("").to_string()
        };
        response_headers.insert(k.to_string(), v);
    }
    let upstream_saw = echoed.as_ref().map(|e| {
        e.headers
            .iter()
            .map(|(k, v)| {
                // Each proxy has its own fail-first key.
                if k == "x-echo-key" {
                    return (
                        k.clone(),
                        v.trim_end_matches("-Envoy")
                            .trim_end_matches("-Skiff")
                            .to_string(),
                    );
                }
                // The remaining time on a retry depends on timing; keep only "full" vs "less".
                if k == "x-envoy-expected-rq-timeout-ms" && v != "15000" {
                    return (k.clone(), "<remaining>".to_string());
                }
                let v = if k == "x-request-id" {
                    // Envoy generates UUIDs; a client-chosen id must pass unchanged.
                    if v == "client-chosen-id" {
                        v.clone()
                    } else if uuid_like(v) {
                        "<uuid>".into()
                    } else {
                        v.clone()
                    }
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    });
    Observed {
        status: reply.status,
        local_body: echoed
            .is_none()
            .then(|| String::from_utf8_lossy(&reply.body).into_owned()),
        response_headers,
        upstream_saw,
        upstream_path: echoed.as_ref().map(|e| e.path.clone()),
        upstream_name: echoed.map(|e| e.name),
    }
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Access-log fields, with the per-run upstream/downstream ports blanked.
fn log_fields(line: &str) -> Vec<String> {
    line.split('\t').map(|f| f.to_string()).collect()
}

struct Side {
    proc: ProxyProc,
    port: u16,
}

fn start(kind: Kind, a: &Echo, b: &Echo, dead: u16) -> Side {
    let (port, admin) = (free_port(), free_port());
    let cfg = bootstrap(port, admin, a, b, dead);
    let mut proc = match kind {
        Kind::Skiff => ProxyProc::skiff(BIN, &cfg, admin),
        Kind::Envoy => ProxyProc::envoy(&cfg, admin),
    };
    proc.wait_ready();
    Side { proc, port }
}

#[test]
fn skiff_answers_like_envoy() {
    let a = Echo::local("a");
    let b = Echo::local("b");
    let dead = free_port();
    let envoy = start(Kind::Envoy, &a, &b, dead);
    let skiff = start(Kind::Skiff, &a, &b, dead);
    let client = Client::http1();
    let mut diffs = Vec::new();
    let mut table = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let mut results = Vec::new();
        for side in [&envoy, &skiff] {
            let url = format!("http://127.0.0.1:{}{}", side.port, case.path);
            // Fail-first counters are per key: give each proxy its own.
            let keyed: Vec<(String, String)> = case
                .headers
                .iter()
                .map(|(k, v)| {
                    if *k == "x-echo-key" {
                        (k.to_string(), format!("{v}-{:?}", side.proc.kind))
                    } else {
                        (k.to_string(), v.to_string())
                    }
                })
                .collect();
            let mut headers: Vec<(&str, &str)> = vec![("host", case.host)];
            headers.extend(keyed.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let reply = client
                .get(&url, &headers)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let lines = side.proc.wait_log_lines(i + 1);
            let line = lines.get(i).cloned().unwrap_or_default();
            results.push((observe(&reply), log_fields(&line)));
        }
        let (e, s) = (&results[0], &results[1]);
        let same = e == s;
        table.push(format!(
            "| {} | {} | {} |",
            case.name,
            e.0.status,
            if same { "same" } else { "DIFFERENT" }
        ));
        if !same {
            diffs.push(format!(
                "== {}\n envoy: {:?}\n        log {:?}\n skiff: {:?}\n        log {:?}",
                case.name, e.0, e.1, s.0, s.1
            ));
        }
    }
    println!("{}", table.join("\n"));
    assert!(
        diffs.is_empty(),
        "{} of {} cases differ from Envoy:\n{}",
        diffs.len(),
        CASES.len(),
        diffs.join("\n")
    );
}
