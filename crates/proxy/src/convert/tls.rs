//! TLS protos → model: a filter chain's `DownstreamTlsContext` (inline certificates or SDS
//! secret names over ADS, ALPN, client-certificate validation) and SDS `Secret` resources.
//! PEM is parsed here once, so a broken certificate is rejected with the resource and field
//! that carry it and the data path only ever sees material that loads.

use std::sync::Arc;

use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use xds::pb::envoy::config::core::v3 as core;
use xds::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use xds::pb::google::protobuf::Any;

use super::{data_source, decode, ConfigError, Ctx};
use crate::model::{CertSource, DownstreamTls, TlsMaterial};

pub const DOWNSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
pub const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const RAW_BUFFER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// A filter chain's `transport_socket`: `None` for plaintext (`raw_buffer`).
pub fn transport_socket(
    ctx: &mut Ctx<'_>,
    field: &str,
    ts: &core::TransportSocket,
) -> Result<Option<DownstreamTls>, ConfigError> {
    let any = ts.config_type.as_ref().map(|c| match c {
        core::transport_socket::ConfigType::TypedConfig(any) => any,
    });
    match any.map(|a| a.type_url.as_str()) {
        Some(DOWNSTREAM_TLS_TYPE) => {}
        Some(RAW_BUFFER_TYPE) => return Ok(None),
        None if ts.name.ends_with("raw_buffer") => return Ok(None),
        None if ts.name == "envoy.transport_sockets.tls" || ts.name == "tls" => {
            return Err(ctx.err(
                format!("{field}.typed_config"),
                "a DownstreamTlsContext is required",
            ))
        }
        other => {
            return Err(ctx.err(
                field,
                format!(
                    "transport socket {} ({}) is not supported",
                    ts.name,
                    other.unwrap_or("no typed_config")
                ),
            ))
        }
    }
    let empty = Any::default();
    let c: tls::DownstreamTlsContext = decode(
        ctx,
        &format!("{field}.typed_config"),
        any.unwrap_or(&empty),
        DOWNSTREAM_TLS_TYPE,
    )?;
    downstream(ctx, &format!("{field}.typed_config"), &c).map(Some)
}

fn downstream(
    ctx: &mut Ctx<'_>,
    field: &str,
    c: &tls::DownstreamTlsContext,
) -> Result<DownstreamTls, ConfigError> {
    let common = c.common_tls_context.clone().unwrap_or_default();
    let cf = format!("{field}.common_tls_context");
    let mut certificates = Vec::new();
    for (i, cert) in common.tls_certificates.iter().enumerate() {
        let f = format!("{cf}.tls_certificates[{i}]");
        certificates.push(CertSource::Inline(Arc::new(certificate(ctx, &f, cert)?)));
    }
    for (i, sds) in common.tls_certificate_sds_secret_configs.iter().enumerate() {
        certificates.push(sds_name(
            ctx,
            &format!("{cf}.tls_certificate_sds_secret_configs[{i}]"),
            sds,
        )?);
    }
    if certificates.is_empty() {
        return Err(ctx.err(
            &cf,
            "tls_certificates or tls_certificate_sds_secret_configs is required",
        ));
    }
    use tls::common_tls_context::ValidationContextType as V;
    let validation = match &common.validation_context_type {
        None => None,
        Some(V::ValidationContext(v)) => validation_context(ctx, &format!("{cf}.validation_context"), v)?,
        Some(V::ValidationContextSdsSecretConfig(s)) => Some(sds_name(
            ctx,
            &format!("{cf}.validation_context_sds_secret_config"),
            s,
        )?),
        Some(V::CombinedValidationContext(c)) => {
            let f = format!("{cf}.combined_validation_context");
            match (
                &c.validation_context_sds_secret_config,
                &c.default_validation_context,
            ) {
                (Some(s), _) => Some(sds_name(
                    ctx,
                    &format!("{f}.validation_context_sds_secret_config"),
                    s,
                )?),
                (None, Some(v)) => validation_context(ctx, &format!("{f}.default_validation_context"), v)?,
                (None, None) => None,
            }
        }
        #[allow(unreachable_patterns)]
        Some(_) => {
            return Err(ctx.err(
                format!("{cf}.validation_context_type"),
                "this validation context is not supported",
            ))
        }
    };
    let require_client_certificate = c.require_client_certificate.is_some_and(|b| b.value);
    if require_client_certificate && validation.is_none() {
        return Err(ctx.err(
            format!("{field}.require_client_certificate"),
            "needs a validation context with trusted_ca",
        ));
    }
    if let Some(p) = &common.tls_params {
        if !p.cipher_suites.is_empty() || !p.ecdh_curves.is_empty() {
            ctx.warn(
                format!("{cf}.tls_params"),
                "cipher suites and curves are rustls' safe defaults; ignored",
            );
        }
    }
    for (set, name) in [
        (c.require_sni.is_some_and(|b| b.value), "require_sni"),
        (c.ocsp_staple_policy != 0, "ocsp_staple_policy"),
        (c.session_ticket_keys_type.is_some(), "session_ticket_keys"),
    ] {
        if set {
            ctx.unsupported(&format!("{field}.{name}"));
        }
    }
    Ok(DownstreamTls {
        certificates,
        validation,
        require_client_certificate,
        alpn: common.alpn_protocols.clone(),
    })
}

fn sds_name(ctx: &Ctx<'_>, field: &str, s: &tls::SdsSecretConfig) -> Result<CertSource, ConfigError> {
    if s.name.is_empty() {
        return Err(ctx.err(format!("{field}.name"), "is required"));
    }
    // Secrets come over ADS (what Istio gateways use) or from the bootstrap's static secrets
    // (no sds_config). Other sources (a separate SDS gRPC cluster, files) are not fetched.
    if let Some(cs) = &s.sds_config {
        use core::config_source::ConfigSourceSpecifier as S;
        if !matches!(cs.config_source_specifier, Some(S::Ads(_))) {
            return Err(ctx.err(
                format!("{field}.sds_config"),
                format!(
                    "secret {:?}: only SDS over ADS (`sds_config: {{ ads: {{}} }}`) is supported",
                    s.name
                ),
            ));
        }
    }
    Ok(CertSource::Sds(s.name.clone()))
}

fn validation_context(
    ctx: &mut Ctx<'_>,
    field: &str,
    v: &tls::CertificateValidationContext,
) -> Result<Option<CertSource>, ConfigError> {
    let Some(ca) = &v.trusted_ca else {
        if v.system_root_certs.is_some() {
            ctx.unsupported(&format!("{field}.system_root_certs"));
        }
        return Ok(None);
    };
    let pem = data_source(ctx, &format!("{field}.trusted_ca"), ca)?;
    ca_bundle(ctx, &format!("{field}.trusted_ca"), &pem)?;
    if !v.match_typed_subject_alt_names.is_empty() || !v.verify_certificate_spki.is_empty() {
        ctx.warn(
            field,
            "subject-alt-name and SPKI pinning are not enforced by Skiff; chain validation only",
        );
    }
    Ok(Some(CertSource::Inline(Arc::new(TlsMaterial {
        certificate_chain: Bytes::new(),
        private_key: Bytes::new(),
        trusted_ca: pem,
    }))))
}

fn certificate(ctx: &mut Ctx<'_>, field: &str, c: &tls::TlsCertificate) -> Result<TlsMaterial, ConfigError> {
    let chain = c
        .certificate_chain
        .as_ref()
        .ok_or_else(|| ctx.err(format!("{field}.certificate_chain"), "is required"))?;
    let key = c
        .private_key
        .as_ref()
        .ok_or_else(|| ctx.err(format!("{field}.private_key"), "is required"))?;
    let chain = data_source(ctx, &format!("{field}.certificate_chain"), chain)?;
    let key = data_source(ctx, &format!("{field}.private_key"), key)?;
    if c.private_key_provider.is_some() || c.pkcs12.is_some() || c.password.is_some() {
        return Err(ctx.err(
            field,
            "private_key_provider, pkcs12 and password-protected keys are not supported",
        ));
    }
    let m = TlsMaterial {
        certificate_chain: chain,
        private_key: key,
        trusted_ca: Bytes::new(),
    };
    certified_key(&m).map_err(|(f, reason)| ctx.err(format!("{field}.{f}"), reason))?;
    Ok(m)
}

/// Parses a certificate chain and its key. Err: (field, reason).
pub fn certified_key(
    m: &TlsMaterial,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), (&'static str, String)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&m.certificate_chain)
        .collect::<Result<_, _>>()
        .map_err(|e| ("certificate_chain", format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(("certificate_chain", "no CERTIFICATE block in the PEM data".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&m.private_key)
        .map_err(|e| ("private_key", format!("no usable private key: {e}")))?;
    // The key must be one rustls can sign with (RSA, ECDSA P-256/P-384, Ed25519).
    rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| ("private_key", format!("unsupported key: {e}")))?;
    Ok((certs, key))
}

/// Parses a CA bundle into a root store.
pub fn ca_bundle(ctx: &Ctx<'_>, field: &str, pem: &[u8]) -> Result<rustls::RootCertStore, ConfigError> {
    roots(pem).map_err(|reason| ctx.err(field, reason))
}

pub fn roots(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("bad PEM: {e}"))?;
        store
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if store.is_empty() {
        return Err("no CERTIFICATE block in the PEM data".into());
    }
    Ok(store)
}

/// Converts an SDS `Secret` (ADS or bootstrap `static_resources.secrets`).
pub fn secret(s: &tls::Secret, warnings: &mut Vec<String>) -> Result<TlsMaterial, ConfigError> {
    let mut ctx = Ctx::new("secret", &s.name, warnings);
    if s.name.is_empty() {
        return Err(ctx.err("name", "a secret needs a name"));
    }
    use tls::secret::Type;
    match &s.r#type {
        Some(Type::TlsCertificate(c)) => certificate(&mut ctx, "tls_certificate", c),
        Some(Type::ValidationContext(v)) => match validation_context(&mut ctx, "validation_context", v)? {
            Some(CertSource::Inline(m)) => Ok((*m).clone()),
            _ => Err(ctx.err("validation_context.trusted_ca", "is required")),
        },
        Some(Type::SessionTicketKeys(_)) | Some(Type::GenericSecret(_)) => Err(ctx.err(
            "type",
            "only tls_certificate and validation_context secrets are supported",
        )),
        None => Err(ctx.err("type", "tls_certificate or validation_context is required")),
    }
}
