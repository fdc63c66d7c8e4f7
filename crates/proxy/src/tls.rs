//! Downstream TLS termination: a rustls `ServerConfig` per filter chain, built once per snapshot
//! from the chain's `DownstreamTlsContext` and the secrets it names, and the handshake itself
//! with Envoy's `listener.<address>.ssl.*` counters.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use crate::convert::tls::{certified_key, roots};
use crate::model::{CertSource, DownstreamTls, TlsMaterial};

/// Envoy has no handshake deadline by default; Skiff bounds it so a silent client cannot hold a
/// connection slot forever before any filter (and its idle timeout) runs.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A chain's TLS at one snapshot: the server config, or `None` while a secret it names is
/// missing (Envoy resets those connections and counts `downstream_context_secrets_not_ready`).
#[derive(Debug)]
pub struct TlsServer {
    pub config: Option<Arc<ServerConfig>>,
    pub stats: Arc<TlsStats>,
    /// The material it was built from, to reuse the config when a snapshot changes nothing TLS.
    built_from: Vec<Arc<TlsMaterial>>,
}

/// `listener.<address>.ssl.*` and `server_ssl_socket_factory.*` for one listener.
#[derive(Debug, Default)]
pub struct TlsStats {
    pub connection_error: AtomicU64,
    pub handshake: AtomicU64,
    pub no_certificate: AtomicU64,
    pub fail_verify_no_cert: AtomicU64,
    pub fail_verify_error: AtomicU64,
    pub tls12: AtomicU64,
    pub tls13: AtomicU64,
    pub secrets_not_ready: AtomicU64,
}

/// Counters by listener stat prefix; they outlive snapshots as Envoy's do.
fn registry() -> &'static Mutex<BTreeMap<String, Arc<TlsStats>>> {
    static R: OnceLock<Mutex<BTreeMap<String, Arc<TlsStats>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Envoy's listener stat prefix: the address as `ip_port` (`0.0.0.0_443`).
pub fn stat_prefix(addr: std::net::SocketAddr) -> String {
    format!("{}_{}", addr.ip(), addr.port()).replace(':', "_")
}

pub fn stats_for(prefix: &str) -> Arc<TlsStats> {
    let mut r = registry().lock().unwrap_or_else(|p| p.into_inner());
    r.entry(prefix.to_owned()).or_default().clone()
}

/// `/stats` lines for every listener that has terminated (or tried to terminate) TLS.
pub fn stats_lines() -> Vec<(String, u64)> {
    let r = registry().lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::new();
    for (prefix, s) in r.iter() {
        for (name, c) in [
            ("ssl.connection_error", &s.connection_error),
            ("ssl.handshake", &s.handshake),
            ("ssl.no_certificate", &s.no_certificate),
            ("ssl.fail_verify_no_cert", &s.fail_verify_no_cert),
            ("ssl.fail_verify_error", &s.fail_verify_error),
            ("ssl.versions.TLSv1.2", &s.tls12),
            ("ssl.versions.TLSv1.3", &s.tls13),
            (
                "server_ssl_socket_factory.downstream_context_secrets_not_ready",
                &s.secrets_not_ready,
            ),
        ] {
            out.push((format!("listener.{prefix}.{name}"), c.load(Relaxed)));
        }
    }
    out
}

/// Looks up a secret's material by SDS name.
pub trait SecretLookup {
    fn secret(&self, name: &str) -> Option<Arc<TlsMaterial>>;
}

fn resolve(src: &CertSource, secrets: &dyn SecretLookup) -> Option<Arc<TlsMaterial>> {
    match src {
        CertSource::Inline(m) => Some(m.clone()),
        CertSource::Sds(name) => secrets.secret(name),
    }
}

/// The SDS names a context needs before it can serve.
pub fn sds_names(tls: &DownstreamTls) -> impl Iterator<Item = &str> {
    tls.certificates
        .iter()
        .chain(tls.validation.iter())
        .filter_map(|c| match c {
            CertSource::Sds(n) => Some(n.as_str()),
            CertSource::Inline(_) => None,
        })
}

impl TlsServer {
    /// Builds (or reuses `previous`, when built from the same material) a chain's server.
    pub fn build(
        tls: &DownstreamTls,
        secrets: &dyn SecretLookup,
        stats: Arc<TlsStats>,
        previous: Option<&TlsServer>,
        warnings: &mut Vec<String>,
    ) -> TlsServer {
        let mut material = Vec::with_capacity(tls.certificates.len() + 1);
        for src in tls.certificates.iter().chain(tls.validation.iter()) {
            match resolve(src, secrets) {
                Some(m) => material.push(m),
                None => {
                    return TlsServer {
                        config: None,
                        stats,
                        built_from: Vec::new(),
                    }
                }
            }
        }
        if let Some(p) = previous {
            let same = p.config.is_some()
                && p.built_from.len() == material.len()
                && p.built_from.iter().zip(&material).all(|(a, b)| Arc::ptr_eq(a, b));
            if same {
                return TlsServer {
                    config: p.config.clone(),
                    stats,
                    built_from: material,
                };
            }
        }
        let (certs, ca) = material.split_at(tls.certificates.len());
        let config = match server_config(tls, certs, ca.first().map(|m| m.as_ref())) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                // Secrets are validated on arrival; this only trips on a mismatched pair.
                warnings.push(format!("tls: cannot build a server context: {e}"));
                None
            }
        };
        TlsServer {
            config,
            stats,
            built_from: material,
        }
    }
}

/// A rustls server config with Envoy's downstream semantics: certificates chosen by SNI, ALPN
/// in the context's (server) preference order, client certificates verified against the
/// validation context's CA and required only with `require_client_certificate`.
pub fn server_config(
    tls: &DownstreamTls,
    certs: &[Arc<TlsMaterial>],
    ca: Option<&TlsMaterial>,
) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match ca {
        Some(m) => {
            let roots = roots(&m.trusted_ca)?;
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if !tls.require_client_certificate {
                v = v.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(v.build().map_err(|e| e.to_string())?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut keys = Vec::with_capacity(certs.len());
    for m in certs {
        let (chain, key) = certified_key(m).map_err(|(f, r)| format!("{f}: {r}"))?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("private_key: {e}"))?;
        keys.push(Arc::new(CertifiedKey::new(chain, signing)));
    }
    if keys.is_empty() {
        return Err("no certificate".into());
    }
    let mut config = builder.with_cert_resolver(Arc::new(BySni { keys }));
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}

/// Envoy's certificate selection: the first certificate valid for the SNI, else the first.
#[derive(Debug)]
struct BySni {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.keys.len() > 1 {
            if let Some(name) = hello.server_name().and_then(|s| ServerName::try_from(s).ok()) {
                let fits = |k: &&Arc<CertifiedKey>| {
                    k.end_entity_cert()
                        .ok()
                        .and_then(|c| ParsedCertificate::try_from(c).ok())
                        .is_some_and(|p| rustls::client::verify_server_name(&p, &name).is_ok())
                };
                if let Some(k) = self.keys.iter().find(fits) {
                    return Some(k.clone());
                }
            }
        }
        self.keys.first().cloned()
    }
}

/// What the handshake established.
#[derive(Clone, Debug, Default)]
pub struct Negotiated {
    pub alpn: Option<Vec<u8>>,
    pub server_name: Option<String>,
    /// `TLSv1.2` / `TLSv1.3` (Envoy's `%DOWNSTREAM_TLS_VERSION%`).
    pub version: Option<&'static str>,
}

/// Runs the server handshake, counting the outcome; failures are logged at debug and close the
/// connection.
pub async fn accept(
    server: &TlsServer,
    stream: TcpStream,
    peer: std::net::SocketAddr,
) -> Option<(TlsStream<TcpStream>, Negotiated)> {
    let s = &server.stats;
    let Some(config) = &server.config else {
        s.secrets_not_ready.fetch_add(1, Relaxed);
        debug!(%peer, "TLS context has no certificate yet (SDS secret not ready); closing");
        return None;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
    let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
    };
    let tls = match result {
        Ok(t) => t,
        Err(e) => {
            use rustls::{CertificateError, Error as E};
            let inner = e.get_ref().and_then(|i| i.downcast_ref::<E>());
            let counter = match inner {
                Some(E::NoCertificatesPresented) => Some(&s.fail_verify_no_cert),
                Some(E::InvalidCertificate(c)) if *c != CertificateError::BadEncoding => {
                    Some(&s.fail_verify_error)
                }
                // The client gave up (it does not trust our certificate: an alert, or just a
                // close) or the socket failed: Envoy counts TLS protocol errors only.
                Some(E::AlertReceived(_)) | None => None,
                Some(_) => Some(&s.connection_error),
            };
            if let Some(c) = counter {
                c.fetch_add(1, Relaxed);
            }
            debug!(%peer, error = %e, "TLS handshake failed");
            return None;
        }
    };
    s.handshake.fetch_add(1, Relaxed);
    let (_, conn) = tls.get_ref();
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => {
            s.tls13.fetch_add(1, Relaxed);
            Some("TLSv1.3")
        }
        Some(rustls::ProtocolVersion::TLSv1_2) => {
            s.tls12.fetch_add(1, Relaxed);
            Some("TLSv1.2")
        }
        _ => None,
    };
    if conn.peer_certificates().is_none_or(|c| c.is_empty()) {
        s.no_certificate.fetch_add(1, Relaxed);
    }
    let negotiated = Negotiated {
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        server_name: conn.server_name().map(str::to_owned),
        version,
    };
    Some((tls, negotiated))
}
