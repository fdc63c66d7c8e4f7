//! SDS over ADS: the certificates gateways name in `credentialName`, from Kubernetes Secrets, as
//! istiod's `SecretGen` (`pilot/pkg/xds/sds.go`) serves them: resource `kubernetes://NAME` (a
//! Secret in the proxy's namespace) or `kubernetes://NS/NAME`, a `tls_certificate` with the chain
//! and key inline; `…-cacert` gives the CA bundle as a `validation_context`. As istiod, a proxy
//! only gets Secrets of its own namespace, and only gateways get any; names that do not resolve
//! are left out (Envoy keeps waiting for them, the listener's other chains still work).

use xds::pb::envoy::config::core::v3 as core;
use xds::pb::envoy::extensions::transport_sockets::tls::v3 as tls;

use super::gateway::CA_SUFFIX;
use super::Context;
use crate::proxy::NodeType;

/// Where a resource name points: `(namespace, secret name, wants the CA bundle)`.
pub fn parse_resource_name(name: &str, proxy_ns: &str) -> Option<(String, String, bool)> {
    let rest = name
        .strip_prefix("kubernetes://")
        .or_else(|| name.strip_prefix("kubernetes-gateway://"))?;
    let (ns, secret) = match rest.split_once('/') {
        Some((ns, s)) => (ns.to_owned(), s.to_owned()),
        None => (proxy_ns.to_owned(), rest.to_owned()),
    };
    match secret.strip_suffix(CA_SUFFIX) {
        Some(base) => Some((ns, base.to_owned(), true)),
        None => Some((ns, secret, false)),
    }
}

fn inline(bytes: &[u8]) -> Option<core::DataSource> {
    Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    })
}

/// A quick sanity check that `pem` holds a PEM block of `kind` (istiod only records invalid
/// certificates in a metric; Skiff logs them, without their content).
fn has_pem(pem: &[u8], kind: &str) -> bool {
    let text = String::from_utf8_lossy(pem);
    text.contains(&format!("-----BEGIN {kind}"))
        || (kind == "PRIVATE KEY" && text.contains("PRIVATE KEY-----"))
}

/// The Secrets named, for this proxy (all its gateways reference when `names` is empty).
pub fn secrets(ctx: &Context<'_>, names: &[String]) -> Vec<tls::Secret> {
    if ctx.proxy.node_type != NodeType::Router {
        return Vec::new();
    }
    let names: Vec<String> = if names.is_empty() {
        super::gateway::secret_names(ctx)
    } else {
        names.to_vec()
    };
    let mut out = Vec::new();
    for name in &names {
        let Some((ns, secret, ca)) = parse_resource_name(name, &ctx.proxy.namespace) else {
            tracing::warn!(resource = %name, "unknown SDS resource name; not served");
            continue;
        };
        if ns != ctx.proxy.namespace {
            tracing::warn!(resource = %name, node = %ctx.proxy.id, "a gateway may only read Secrets of its own namespace; not served");
            continue;
        }
        // A `-cacert` name may also be a Secret of its own.
        let found = ctx.snap.secrets.get(&(ns.clone(), secret.clone())).or_else(|| {
            ctx.snap
                .secrets
                .get(&(ns.clone(), format!("{secret}{CA_SUFFIX}")))
        });
        let Some(s) = found else {
            tracing::debug!(resource = %name, "no such Secret (yet)");
            continue;
        };
        let secret_type = if ca {
            s.ca_certificate().map(|ca| {
                tls::secret::Type::ValidationContext(tls::CertificateValidationContext {
                    trusted_ca: inline(ca),
                    ..Default::default()
                })
            })
        } else {
            s.certificate().map(|(chain, key)| {
                if !has_pem(chain, "CERTIFICATE") || !has_pem(key, "PRIVATE KEY") {
                    tracing::warn!(resource = %name, "Secret does not hold a PEM certificate and key");
                }
                tls::secret::Type::TlsCertificate(tls::TlsCertificate {
                    certificate_chain: inline(chain),
                    private_key: inline(key),
                    ..Default::default()
                })
            })
        };
        match secret_type {
            Some(t) => out.push(tls::Secret {
                name: name.clone(),
                r#type: Some(t),
            }),
            None => {
                tracing::warn!(resource = %name, "Secret has no certificate for this resource; not served")
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names() {
        assert_eq!(
            parse_resource_name("kubernetes://cred", "istio-system"),
            Some(("istio-system".into(), "cred".into(), false))
        );
        assert_eq!(
            parse_resource_name("kubernetes://cred-cacert", "istio-system"),
            Some(("istio-system".into(), "cred".into(), true))
        );
        assert_eq!(
            parse_resource_name("kubernetes://other/cred", "istio-system"),
            Some(("other".into(), "cred".into(), false))
        );
        assert_eq!(parse_resource_name("default", "a"), None);
    }
}
