//! `proxy-config endpoint` from `/clusters?format=json` (each host's address, EDS health and
//! outlier state), and the EDS table `all` prints from a dump taken with `?include_eds`.

use crate::cluster::{sort_key, subset_key_less};
use crate::gosort::sort_slice;
use crate::json::Json;
use crate::tabwriter::TabWriter;
use crate::{equal_fold, render_objects, ConfigDump, Error, Output};

/// `core.v3.HealthStatus` names by number.
const HEALTH: [&str; 6] = [
    "UNKNOWN",
    "HEALTHY",
    "UNHEALTHY",
    "DRAINING",
    "TIMEOUT",
    "DEGRADED",
];

fn health_name(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => HEALTH[0].into(),
        n => {
            let i = n.uint();
            HEALTH
                .get(i as usize)
                .map_or_else(|| i.to_string(), |s| (*s).to_owned())
        }
    }
}

/// `--address`, `--port`, `--cluster`, `--status` (address, cluster and status ignore case).
#[derive(Clone, Debug, Default)]
pub struct EndpointFilter {
    pub address: String,
    pub port: u32,
    pub cluster: String,
    pub status: String,
}

impl EndpointFilter {
    fn is_empty(&self) -> bool {
        self.address.is_empty() && self.port == 0 && self.cluster.is_empty() && self.status.is_empty()
    }

    fn check(&self, address: &str, port: u64, cluster: &str, status: &str) -> bool {
        if self.is_empty() {
            return true;
        }
        if !self.address.is_empty() && !equal_fold(address, &self.address) {
            return false;
        }
        if self.port != 0 && port != u64::from(self.port) {
            return false;
        }
        if !self.cluster.is_empty() && !equal_fold(cluster, &self.cluster) {
            return false;
        }
        if !self.status.is_empty() && !equal_fold(status, &self.status) {
            return false;
        }
        true
    }
}

/// The address of a host: `ip`, `unix://path`, `envoy://listener/id` or `unknown`.
fn host_address(addr: &Json) -> String {
    let sock = addr.get("socket_address");
    if sock.is_object() {
        return sock.get("address").str().to_owned();
    }
    let pipe = addr.get("pipe");
    if pipe.is_object() {
        return format!("unix://{}", pipe.get("path").str());
    }
    let internal = addr.get("envoy_internal_address");
    if let Some(listener) = internal.get("server_listener_name").as_str() {
        return format!("envoy://{listener}/{}", internal.get("endpoint_id").str());
    }
    "unknown".into()
}

/// A parsed `/clusters?format=json`.
#[derive(Debug, Clone)]
pub struct Clusters {
    root: Json,
}

struct Row<'a> {
    address: String,
    port: u64,
    cluster: &'a str,
    status: String,
    outlier_failed: bool,
}

impl Clusters {
    /// Parses `/clusters?format=json` (Envoy's `admin.v3.Clusters`).
    pub fn parse(text: &str) -> Result<Clusters, Error> {
        let root = Json::parse(text).map_err(|e| Error::Parse {
            what: "the clusters output",
            reason: e.to_string(),
        })?;
        if !root.is_object() {
            return Err(Error::Shape {
                what: "the clusters output",
                expected:
                    "a JSON object (Envoy's /clusters?format=json answers {\"cluster_statuses\": [...]}); \
                           a config dump is not accepted here",
            });
        }
        Ok(Clusters { root })
    }

    fn statuses(&self) -> &[Json] {
        self.root.get("cluster_statuses").items()
    }

    fn rows(&self, filter: &EndpointFilter) -> Vec<(Row<'_>, &Json)> {
        let mut rows = Vec::new();
        for c in self.statuses() {
            let cluster = c.get("name").str();
            for h in c.get("host_statuses").items() {
                let addr = h.get("address");
                let row = Row {
                    address: host_address(addr),
                    port: addr.get("socket_address").get("port_value").uint(),
                    cluster,
                    status: health_name(h.get("health_status").get("eds_health_status")),
                    outlier_failed: h.get("health_status").get("failed_outlier_check").bool(),
                };
                if filter.check(&row.address, row.port, cluster, &row.status) {
                    rows.push((row, c));
                }
            }
        }
        rows
    }
}

/// The endpoint table (`ENDPOINT  STATUS  OUTLIER CHECK  CLUSTER`), sorted by address, port,
/// cluster.
pub fn summary(c: &Clusters, filter: &EndpointFilter) -> String {
    let mut rows: Vec<Row> = c.rows(filter).into_iter().map(|(r, _)| r).collect();
    sort_slice(&mut rows, |a, b| {
        if a.address != b.address {
            return a.address < b.address;
        }
        if a.port != b.port {
            return a.port < b.port;
        }
        a.cluster < b.cluster
    });
    let mut w = TabWriter::new(0, 5);
    w.row(&["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"]);
    for r in rows {
        let endpoint = if r.port != 0 {
            format!("{}:{}", r.address, r.port)
        } else {
            r.address.clone()
        };
        let outlier = if r.outlier_failed { "FAILED" } else { "OK" };
        w.row(&[endpoint.as_str(), &r.status, outlier, r.cluster]);
    }
    w.render()
}

/// `-o json|yaml`: every cluster status with at least one host passing the filter (with all its
/// hosts), in `/clusters` order.
pub fn dump(c: &Clusters, filter: &EndpointFilter, output: Output) -> String {
    let mut picked: Vec<&Json> = Vec::new();
    for (_, status) in c.rows(filter) {
        if !picked.iter().any(|p| std::ptr::eq(*p, status)) {
            picked.push(status);
        }
    }
    render_objects(&picked, "envoy.admin.v3.ClusterStatus", output)
}

/// `proxy-config endpoint` in the requested format.
pub fn print(c: &Clusters, filter: &EndpointFilter, output: Output) -> String {
    match output {
        Output::Short => summary(c, filter),
        _ => dump(c, filter, output),
    }
}

// === EDS from the config dump (`all`) ===

/// An endpoint's address in the EDS table: `ip:port` (port always), the pipe path, or
/// `envoy://listener/id`.
fn lb_endpoint_address(ep: &Json) -> String {
    let addr = ep.get("endpoint").get("address");
    let sock = addr.get("socket_address");
    if sock.is_object() {
        return format!("{}:{}", sock.get("address").str(), sock.get("port_value").uint());
    }
    let pipe = addr.get("pipe");
    if pipe.is_object() {
        return pipe.get("path").str().to_owned();
    }
    let internal = addr.get("envoy_internal_address");
    if let Some(listener) = internal.get("server_listener_name").as_str() {
        return format!("envoy://{listener}/{}", internal.get("endpoint_id").str());
    }
    "unknown".into()
}

/// Istio's `region/zone/subzone`, stopping at the first empty part.
fn locality(l: &Json) -> String {
    let mut out = l.get("region").str().to_owned();
    let zone = l.get("zone").str();
    if zone.is_empty() {
        return out;
    }
    out.push('/');
    out.push_str(zone);
    let sub = l.get("sub_zone").str();
    if !sub.is_empty() {
        out.push('/');
        out.push_str(sub);
    }
    out
}

/// The EDS table of `proxy-config all` (`NAME  STATUS  LOCALITY  CLUSTER`): endpoint assignments
/// from a dump taken with `?include_eds`, ordered like clusters. A dump without them prints the
/// header alone, as istioctl does.
pub fn eds_summary(d: &ConfigDump, filter: &EndpointFilter, name_column: bool) -> String {
    struct Assignment<'a> {
        cluster: &'a str,
        key: crate::cluster::SubsetKey,
        rows: Vec<(String, String, String)>,
    }
    let mut assignments: Vec<Assignment> = Vec::new();
    for cla in d.endpoint_configs().unwrap_or_default() {
        let cluster = cla.get("cluster_name").str();
        let mut rows = Vec::new();
        for group in cla.get("endpoints").items() {
            for ep in group.get("lb_endpoints").items() {
                let addr = lb_endpoint_address(ep);
                let port = ep
                    .get("endpoint")
                    .get("address")
                    .get("socket_address")
                    .get("port_value")
                    .uint();
                let status = health_name(ep.get("health_status"));
                if filter.check(&addr, port, cluster, &status) {
                    rows.push((addr, status, locality(group.get("locality"))));
                }
            }
        }
        if !rows.is_empty() {
            assignments.push(Assignment {
                cluster,
                key: sort_key(cluster),
                rows,
            });
        }
    }
    sort_slice(&mut assignments, |a, b| subset_key_less(&a.key, &b.key));
    let mut w = TabWriter::new(0, 5);
    w.row(&["NAME", "STATUS", "LOCALITY", "CLUSTER"]);
    for a in assignments {
        for (addr, status, loc) in a.rows {
            let addr = if name_column {
                format!("endpoint/{addr}")
            } else {
                addr
            };
            w.row(&[addr.as_str(), &status, &loc, a.cluster]);
        }
    }
    w.render()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoint_rows_sorted_and_filtered() {
        let c = Clusters::parse(
            r#"{"cluster_statuses": [
              {"name": "outbound|80||nginx.sidecar.svc.cluster.local", "host_statuses": [
                {"address": {"socket_address": {"address": "10.244.0.6", "port_value": 80}}, "health_status": {"eds_health_status": "HEALTHY"}}]},
              {"name": "sds-grpc", "host_statuses": [{"address": {"pipe": {"path": "./etc/istio/proxy/SDS"}}, "health_status": {"failed_outlier_check": true}}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            summary(&c, &EndpointFilter::default()),
            "ENDPOINT                         STATUS      OUTLIER CHECK     CLUSTER\n\
             10.244.0.6:80                    HEALTHY     OK                outbound|80||nginx.sidecar.svc.cluster.local\n\
             unix://./etc/istio/proxy/SDS     UNKNOWN     FAILED            sds-grpc\n"
        );
        let f = EndpointFilter {
            status: "healthy".into(),
            ..Default::default()
        };
        assert_eq!(summary(&c, &f).lines().count(), 2);
        assert!(Clusters::parse("[1]").is_err());
    }
}
