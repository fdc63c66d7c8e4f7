//! Skiff's istiod core: the service registry (a config directory of ordinary Kubernetes YAML, or
//! a Kubernetes API server) turned into each sidecar's Envoy resources, served over ADS.
//!
//! Data flows `registry` (sources → events → [`registry::Store`]) → [`snapshot::Snapshot`] →
//! `gen` (pure: snapshot + [`proxy::Proxy`] → listeners, routes, clusters, endpoints) →
//! [`discovery::Discovery`] (the `xds::server::Generator`) → `xds::server::AdsServer`.

pub mod analyze;
pub mod app;
pub mod discovery;
pub mod gen;
pub mod istio;
pub mod mesh;
pub mod model;
pub mod monitor;
pub mod proxy;
pub mod registry;
pub mod service_entry;
pub mod snapshot;
