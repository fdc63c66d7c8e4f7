//! `proxy-config all`: every summary in one go, each with a leading `type/name` column.

use std::time::SystemTime;

use crate::cluster::ClusterFilter;
use crate::endpoint::EndpointFilter;
use crate::listener::ListenerFilter;
use crate::route::RouteFilter;
use crate::{bootstrap, cluster, endpoint, listener, route, secret, ConfigDump, Error};

/// The filters `all` shares out: `--port` applies to clusters, listeners and endpoints,
/// `--address` to listeners and endpoints.
#[derive(Clone, Debug, Default)]
pub struct FullFilter {
    pub cluster: ClusterFilter,
    pub listener: ListenerFilter,
    pub route: RouteFilter,
    pub endpoint: EndpointFilter,
}

/// Bootstrap versions, clusters, listeners, routes, secrets and EDS endpoints, separated by blank
/// lines. `now` decides the secrets' VALID CERT column.
pub fn full_summary(d: &ConfigDump, f: &FullFilter, now: SystemTime) -> Result<String, Error> {
    let mut out = bootstrap::summary(d)?;
    out.push('\n');
    out.push_str(&cluster::summary(d, &f.cluster, true)?);
    out.push('\n');
    out.push_str(&listener::summary(d, &f.listener, true)?);
    out.push('\n');
    out.push_str(&route::summary(d, &f.route, true)?);
    out.push('\n');
    out.push_str(&secret::summary_at(d, true, now)?);
    out.push('\n');
    out.push_str(&endpoint::eds_summary(d, &f.endpoint, true));
    Ok(out)
}

/// `proxy-config all -o json|yaml`: the dump itself, unfiltered, as Envoy wrote it (snake_case),
/// or its YAML.
pub fn raw(d: &ConfigDump, text: &str, output: crate::Output) -> String {
    match output {
        crate::Output::Yaml => format!("{}\n", crate::json::to_yaml(d.root())),
        _ => format!("{text}\n"),
    }
}
