//! Downstream TLS termination from a static bootstrap, against real peers: curl and
//! `openssl s_client` as clients, certificates made by the openssl CLI, and the same bootstrap
//! run under real Envoy for the same answers (certificate per SNI, ALPN, `x-forwarded-proto`,
//! the access log's TLS fields, `listener.<addr>.ssl.*` stats).

#![allow(clippy::unwrap_used)]

mod tls_peers;

use testkit::http::{free_port, Echo};
use testkit::proxy::{Kind, ProxyProc};
use tls_peers::{curl, s_client_subject, s_client_subject_with, Certs};

const BIN: &str = env!("CARGO_BIN_EXE_skiff-agent");

const LOG: &str = "%REQUESTED_SERVER_NAME%\\t%DOWNSTREAM_TLS_VERSION%\\t%PROTOCOL%\\t%RESPONSE_CODE%\\n";

/// Two SNI chains: `a.example.com` with an inline (file) certificate, `b.example.com` with a
/// static SDS secret (`static_resources.secrets`), both offering h2 and http/1.1.
fn bootstrap(listen: u16, admin: u16, certs: &Certs, echo: &Echo) -> String {
    let chain = |host: &str, tls: String| {
        format!(
            r#"
    - filter_chain_match: {{ server_names: ["{host}"] }}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
{tls}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: https
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {{ text_format_source: {{ inline_string: "{LOG}" }} }}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: echo }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#
        )
    };
    let a = chain(
        "a.example.com",
        format!(
            "            tls_certificates:\n            - certificate_chain: {{ filename: {} }}\n              private_key: {{ filename: {} }}",
            certs.cert("a.example.com").display(),
            certs.key("a.example.com").display()
        ),
    );
    let b = chain(
        "b.example.com",
        "            tls_certificate_sds_secret_configs: [{ name: cert-b }]".into(),
    );
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  secrets:
  - name: cert-b
    tls_certificate:
      certificate_chain: {{ filename: {bc} }}
      private_key: {{ filename: {bk} }}
  listeners:
  - name: https
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
    filter_chains:{a}{b}
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {echo} }} }} }}
"#,
        bc = certs.cert("b.example.com").display(),
        bk = certs.key("b.example.com").display(),
        echo = echo.addr.port(),
    )
}

/// What one proxy answered, to compare Skiff with Envoy.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    subject_a: String,
    subject_b: String,
    /// `%{http_version}` for `--http2` and `--http1.1`, per host.
    versions: Vec<String>,
    /// `x-forwarded-proto` the upstream saw, per request.
    forwarded_proto: Vec<String>,
    log: Vec<String>,
    /// `listener.127.0.0.1_PORT.ssl.*` after a client that rejects the certificate and one
    /// that shares no cipher suite.
    ssl_stats: Vec<String>,
}

fn observe(kind: Kind, certs: &Certs) -> Observed {
    let echo = Echo::local("tls-echo");
    let (listen, admin) = (free_port(), free_port());
    let cfg = bootstrap(listen, admin, certs, &echo);
    let mut proxy = match kind {
        Kind::Skiff => ProxyProc::skiff(BIN, &cfg, admin),
        Kind::Envoy => ProxyProc::envoy(&cfg, admin),
    };
    proxy.wait_ready();
    let subject_a = s_client_subject(listen, "a.example.com");
    let subject_b = s_client_subject(listen, "b.example.com");
    let mut versions = Vec::new();
    let mut forwarded_proto = Vec::new();
    for host in ["a.example.com", "b.example.com"] {
        for flag in ["--http2", "--http1.1"] {
            let (version, body) =
                curl(listen, host, certs, &[flag]).unwrap_or_else(|e| panic!("{kind:?} {host} {flag}: {e}"));
            let echoed: serde_json::Value =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{kind:?}: {e}: {body}"));
            forwarded_proto.push(
                echoed["headers"]["x-forwarded-proto"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            );
            versions.push(format!("{host} {flag} {version}"));
        }
    }
    // A client that does not trust the certificate aborts the handshake.
    let failed = curl(
        listen,
        "a.example.com",
        certs,
        &["--http1.1", "--cacert", "/dev/null"],
    );
    assert!(
        failed.is_err(),
        "{kind:?}: an untrusted certificate must fail the client"
    );
    // Only RSA suites offered to an ECDSA certificate: no shared cipher, a server-side error.
    let none = s_client_subject_with(
        listen,
        "a.example.com",
        &["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
    );
    assert!(none.starts_with("no certificate"), "{kind:?}: {none}");
    let mut log = proxy.wait_log_lines(4);
    log.sort();
    let prefix = format!("listener.127.0.0.1_{listen}.ssl.");
    let mut ssl_stats: Vec<String> = Vec::new();
    for _ in 0..50 {
        let (_, stats) = proxy.admin("/stats").unwrap();
        ssl_stats = stats
            .lines()
            .filter(|l| {
                l.starts_with(&prefix)
                    && [
                        "connection_error",
                        "handshake",
                        "no_certificate",
                        "versions.TLSv1.3",
                    ]
                    .iter()
                    .any(|s| l[prefix.len()..].starts_with(&format!("{s}:")))
            })
            .map(|l| l[prefix.len()..].to_owned())
            .collect();
        ssl_stats.sort();
        if ssl_stats.iter().any(|l| l == "connection_error: 1") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Observed {
        subject_a,
        subject_b,
        versions,
        forwarded_proto,
        log,
        ssl_stats,
    }
}

#[test]
fn https_by_sni_alpn_and_stats_match_envoy() {
    let certs = Certs::generate(&["a.example.com", "b.example.com"]);
    let skiff = observe(Kind::Skiff, &certs);
    assert!(
        skiff.subject_a.contains("CN = a.example.com"),
        "{}",
        skiff.subject_a
    );
    assert!(
        skiff.subject_b.contains("CN = b.example.com"),
        "{}",
        skiff.subject_b
    );
    assert_eq!(
        skiff.versions,
        [
            "a.example.com --http2 2",
            "a.example.com --http1.1 1.1",
            "b.example.com --http2 2",
            "b.example.com --http1.1 1.1",
        ]
    );
    assert_eq!(skiff.forwarded_proto, ["https"; 4]);
    assert_eq!(
        skiff.log,
        [
            "a.example.com\tTLSv1.3\tHTTP/1.1\t200",
            "a.example.com\tTLSv1.3\tHTTP/2\t200",
            "b.example.com\tTLSv1.3\tHTTP/1.1\t200",
            "b.example.com\tTLSv1.3\tHTTP/2\t200",
        ]
    );
    // 4 curls + 2 s_client handshakes succeed; the distrusting client's alert is not counted
    // (as Envoy), the client with no usable cipher is a connection error.
    assert_eq!(
        skiff.ssl_stats,
        [
            "connection_error: 1",
            "handshake: 6",
            "no_certificate: 6",
            "versions.TLSv1.3: 6"
        ]
    );
    let envoy = observe(Kind::Envoy, &certs);
    assert_eq!(skiff, envoy, "Skiff and Envoy differ");
}
