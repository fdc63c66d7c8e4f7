//! `istioctl proxy-config` and `proxy-status`, as data code: Envoy admin JSON in, istioctl's
//! tables (byte for byte, as istioctl 1.19–1.22 prints them) or its JSON/YAML out.
//!
//! Inputs are what a proxy's admin port serves — `/config_dump` (snake_case proto names, `@type`
//! on every `Any`; Skiff's proxy prints the same shape as Envoy), `/clusters?format=json`,
//! `/logging` — and the control plane's `/debug/syncz`. Nothing here does I/O: `skiffctl` fetches
//! the text (a saved file, a pod's network namespace, a Kubernetes port-forward) and prints what
//! these functions return, so every view is testable against saved dumps.
//!
//! Input is never trusted: a missing field reads as its proto default (as istioctl's protobuf
//! reader does), a missing section is an error naming it, and no input makes these functions
//! panic (see the property tests).

pub mod bootstrap;
pub mod cluster;
pub mod dump;
pub mod endpoint;
pub mod gosort;
pub mod json;
pub mod listener;
pub mod logging;
pub mod proto;
pub mod route;
pub mod secret;
pub mod status;
pub mod tabwriter;

mod all;

pub use all::{full_summary, raw as raw_dump, FullFilter};
pub use dump::ConfigDump;
pub use json::Json;

/// How a view is printed (`-o`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// The table (`short`, the default).
    Short,
    /// The filtered Envoy objects as a JSON array, the way istioctl marshals them.
    Json,
    /// The same through `sigs.k8s.io/yaml`.
    Yaml,
}

impl std::str::FromStr for Output {
    type Err = Error;
    fn from_str(s: &str) -> Result<Output, Error> {
        match s {
            "short" => Ok(Output::Short),
            "json" => Ok(Output::Json),
            "yaml" => Ok(Output::Yaml),
            other => Err(Error::Format(other.to_owned())),
        }
    }
}

/// Why a view could not be printed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot parse {what} as JSON: {reason}")]
    Parse { what: &'static str, reason: String },
    #[error("{what} is not {expected}")]
    Shape {
        what: &'static str,
        expected: &'static str,
    },
    #[error("config dump has no {section} (no entry of configs[] has \"@type\": \"type.googleapis.com/envoy.admin.v3.{section}\")")]
    MissingSection { section: &'static str },
    /// istioctl's words when a section holds nothing.
    #[error("no {0} found")]
    Empty(&'static str),
    #[error("output format {0:?} not supported (json, yaml or short)")]
    Format(String),
    #[error("{0}")]
    Invalid(String),
}

/// Renders filtered Envoy objects (messages of type `type_name`) as istioctl's `-o json|yaml`
/// does: a JSON array (Go's 4-space `MarshalIndent` of jsonpb output: JSON field names in
/// declaration order) or its YAML.
pub fn render_objects(objects: &[&Json], type_name: &str, output: Output) -> String {
    let array = Json::Array(
        objects
            .iter()
            .map(|o| proto::to_jsonpb_value(&without_type(o), type_name))
            .collect(),
    );
    match output {
        // istioctl `Fprintln`s the converted text: YAML ends in a blank line.
        Output::Yaml => format!("{}\n", json::to_yaml(&array)),
        _ => format!("{}\n", array.to_go_indented()),
    }
}

/// A message unpacked from its `Any`: the same object without `@type`.
pub(crate) fn without_type(v: &Json) -> Json {
    match v {
        Json::Object(m) => Json::Object(m.iter().filter(|(k, _)| k != "@type").cloned().collect()),
        other => other.clone(),
    }
}

/// Go's `strings.EqualFold`.
pub(crate) fn equal_fold(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || a.to_lowercase() == b.to_lowercase()
}
