//! Loading an Envoy bootstrap file (YAML, JSON or binary proto) unchanged: `admin`, `node`,
//! `static_resources` (listeners, clusters, secrets), and (later) `dynamic_resources`. Fields Skiff does not implement are
//! reported by name.

use std::net::SocketAddr;
use std::path::Path;

use xds::pb::envoy::config::bootstrap::v3::Bootstrap;

use crate::convert::{self, ConfigError, Ctx};
use crate::snapshot::Update;

/// A bootstrap that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: xds::json::JsonError,
    },
    #[error("{path}: not a binary Bootstrap proto: {source}")]
    Binary {
        path: String,
        source: prost::DecodeError,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A parsed bootstrap and what it means for the proxy.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub proto: Bootstrap,
    pub admin: Option<SocketAddr>,
    pub warnings: Vec<String>,
}

impl Loaded {
    /// The static listeners and clusters as a store update.
    pub fn static_update(&self) -> Update {
        let sr = self.proto.static_resources.clone().unwrap_or_default();
        Update {
            version: None,
            listeners: Some(sr.listeners),
            clusters: Some(sr.clusters),
            routes: None,
            endpoints: None,
            secrets: Some(sr.secrets),
            replace: false,
        }
    }
}

/// Reads `path`: `.pb` is binary, anything else YAML/JSON with Envoy's field names.
pub fn load(path: &Path) -> Result<Loaded, BootstrapError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| BootstrapError::Read {
        path: p.clone(),
        source: e,
    })?;
    let proto = if path.extension().is_some_and(|e| e == "pb") {
        prost::Message::decode(bytes.as_slice()).map_err(|e| BootstrapError::Binary {
            path: p.clone(),
            source: e,
        })?
    } else {
        let pool = xds::json::descriptor_pool().map_err(|e| BootstrapError::Parse {
            path: p.clone(),
            source: e,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        xds::json::from_yaml::<Bootstrap>(&pool, &text).map_err(|e| BootstrapError::Parse {
            path: p.clone(),
            source: e,
        })?
    };
    from_proto(proto)
}

/// Interprets a bootstrap proto.
pub fn from_proto(proto: Bootstrap) -> Result<Loaded, BootstrapError> {
    let mut warnings = Vec::new();
    let ctx = Ctx::new("bootstrap", "", &mut warnings);
    let admin = match proto.admin.as_ref().and_then(|a| a.address.as_ref()) {
        Some(addr) => Some(convert::socket_address(&ctx, "admin.address", Some(addr))?),
        None => None,
    };
    let mut unsupported = Vec::new();
    if proto.dynamic_resources.is_some() {
        unsupported.push("dynamic_resources (use skiff-agent proxy sidecar --discovery-address for xDS)");
    }
    if !proto.stats_sinks.is_empty() {
        unsupported.push("stats_sinks");
    }
    #[allow(deprecated)]
    let tracing_set = proto.tracing.is_some();
    if tracing_set {
        unsupported.push("tracing");
    }
    if proto.overload_manager.is_some() {
        unsupported.push("overload_manager");
    }
    for f in unsupported {
        warnings.push(format!("bootstrap: {f}: not supported by Skiff; ignored"));
    }
    Ok(Loaded {
        proto,
        admin,
        warnings,
    })
}
