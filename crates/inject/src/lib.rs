//! Sidecar injection the way Istio 1.19 does it: the same init container, sidecar container,
//! volumes, annotations and labels (seed 004), the same decisions, the same per-pod annotations.
//!
//! Pods are handled as `serde_json::Value` so that fields Skiff does not know (newer Kubernetes,
//! other controllers' additions) pass through untouched. Data flows
//! pod + [`Target`] + [`Settings`] → [`decide`] → [`inject`] → mutated pod, then either
//! [`patch::diff`] (the webhook's JSONPatch) or back into the manifest ([`manifest::kube_inject`]).

pub mod annotations;
pub mod decide;
pub mod manifest;
pub mod patch;
pub mod pod;
pub mod probe;
#[cfg(feature = "server")]
pub mod server;
pub mod settings;
pub mod webhook;

use std::fmt;

pub use decide::{decide, Skip};
pub use pod::{inject, Outcome, Target};
pub use settings::Settings;

/// Names Istio gives the injected containers; a user container may not take them.
pub const PROXY_CONTAINER: &str = "istio-proxy";
pub const INIT_CONTAINER: &str = "istio-init";
pub const CORE_DUMP_CONTAINER: &str = "enable-core-dump";

/// One thing wrong with the input, located by field path (`spec.template.metadata.annotations[…]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a pod could not be injected. Messages name the object (`Deployment default/web`) and
/// every bad field, so one error tells the user all there is to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{object}: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid { object: String, problems: Vec<Problem> },
    #[error("YAML document {document}: {message}")]
    Yaml { document: usize, message: String },
    #[error("cannot write YAML: {0}")]
    Output(String),
}
