//! Istio's MeshConfig YAML (`istiod --meshConfig`, the `mesh` key of the `istio` ConfigMap) for
//! `skiffd --mesh-config FILE`. The fields Skiff applies are type-checked and named in errors;
//! the many MeshConfig fields Skiff does not apply are accepted and listed as ignored, so an
//! Istio install's mesh config loads as it is.

use std::path::Path;
use std::time::Duration;

use api::duration::GoDuration;
use api::networking::{HttpRetry, OutboundMode};
use serde::Deserialize;

use crate::gen::MeshConfig;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MeshError {
    #[error("{path}: cannot read: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {field}: {reason}")]
    Field {
        path: String,
        field: String,
        reason: String,
    },
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OutboundTrafficPolicy {
    #[serde(default)]
    mode: OutboundMode,
}

/// The fields Skiff applies; everything else lands in `rest`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    access_log_file: Option<String>,
    #[serde(default)]
    connect_timeout: Option<GoDuration>,
    #[serde(default)]
    outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    #[serde(default)]
    dns_refresh_rate: Option<GoDuration>,
    #[serde(default)]
    default_http_retry_policy: Option<HttpRetry>,
    #[serde(flatten)]
    rest: std::collections::BTreeMap<String, serde_json::Value>,
}

/// A mesh config and the top-level fields it set that Skiff does not apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub mesh: MeshConfig,
    pub ignored: Vec<String>,
}

/// Parses MeshConfig YAML over Istio's defaults.
pub fn parse(path: &str, text: &str) -> Result<Loaded, MeshError> {
    let value: serde_json::Value = serde_yaml_ng::from_str(text).map_err(|e| MeshError::Field {
        path: path.to_owned(),
        field: String::new(),
        reason: format!("invalid YAML: {e}"),
    })?;
    let value = if value.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        value
    };
    let raw: Raw = serde_path_to_error::deserialize(value).map_err(|e| MeshError::Field {
        path: path.to_owned(),
        field: e.path().to_string(),
        reason: e.into_inner().to_string(),
    })?;
    let mut mesh = MeshConfig {
        access_log_file: raw.access_log_file.filter(|f| !f.is_empty()),
        ..Default::default()
    };
    if let Some(t) = raw.connect_timeout {
        if t.0 < Duration::from_millis(1) {
            return Err(MeshError::Field {
                path: path.into(),
                field: "connectTimeout".into(),
                reason: "must be at least 1ms".into(),
            });
        }
        mesh.connect_timeout = t.0;
    }
    if let Some(p) = raw.outbound_traffic_policy {
        mesh.outbound_traffic_policy = p.mode;
    }
    if let Some(r) = raw.dns_refresh_rate {
        mesh.dns_refresh_rate = r.0;
    }
    if let Some(r) = raw.default_http_retry_policy {
        if r.attempts < 0 {
            return Err(MeshError::Field {
                path: path.into(),
                field: "defaultHttpRetryPolicy.attempts".into(),
                reason: "attempts cannot be negative".into(),
            });
        }
        mesh.default_http_retry_policy = Some(r);
    }
    Ok(Loaded {
        mesh,
        ignored: raw.rest.into_keys().collect(),
    })
}

/// Reads a MeshConfig YAML file.
pub fn load(path: &Path) -> Result<Loaded, MeshError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| MeshError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    parse(&shown, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_mesh_config_yaml() {
        let l = parse(
            "mesh.yaml",
            "accessLogFile: /dev/stdout\nconnectTimeout: 5s\noutboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n\
             defaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\nenablePrometheusMerge: true\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.mesh.access_log_file.as_deref(), Some("/dev/stdout"));
        assert_eq!(l.mesh.connect_timeout, Duration::from_secs(5));
        assert_eq!(l.mesh.outbound_traffic_policy, OutboundMode::RegistryOnly);
        assert_eq!(l.ignored, ["defaultConfig", "enablePrometheusMerge"]);
        assert_eq!(parse("m", "").map(|l| l.mesh), Ok(MeshConfig::default()));
        let e = parse("m", "outboundTrafficPolicy: {mode: DENY}\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("m: outboundTrafficPolicy.mode: unknown variant `DENY`"),
            "{e}"
        );
        let e = parse("m", "connectTimeout: 10\n").unwrap_err();
        assert!(e.to_string().contains("connectTimeout"), "{e}");
    }
}
