//! `proxy-config cluster`: Istio cluster names (`dir|port|subset|fqdn`) split into columns,
//! sorted by FQDN (or bare name), subset, port, direction — istioctl's `cluster.go` writer.

use crate::gosort::sort_slice;
use crate::json::Json;
use crate::route::describe_management;
use crate::tabwriter::TabWriter;
use crate::{render_objects, ConfigDump, Error, Output};

/// `--fqdn`, `--port`, `--subset`, `--direction`: substrings of the cluster name.
#[derive(Clone, Debug, Default)]
pub struct ClusterFilter {
    pub fqdn: String,
    /// Matches `|<port>|`; 0 = any.
    pub port: u32,
    pub subset: String,
    pub direction: String,
}

impl ClusterFilter {
    pub fn verify(&self, c: &Json) -> bool {
        let name = c.get("name").str();
        if !self.fqdn.is_empty() && !name.contains(&self.fqdn) {
            return false;
        }
        if !self.direction.is_empty() && !name.contains(&self.direction) {
            return false;
        }
        if !self.subset.is_empty() && !name.contains(&self.subset) {
            return false;
        }
        if self.port != 0 && !name.contains(&format!("|{}|", self.port)) {
            return false;
        }
        true
    }
}

/// A cluster name taken apart: direction, subset, host, port (Istio 1.22's `ParseSubsetKey`,
/// including the `outbound_.80_.v1_.host` DNS SRV form).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubsetKey {
    pub direction: String,
    pub subset: String,
    pub host: String,
    pub port: i64,
}

pub fn parse_subset_key(s: &str) -> SubsetKey {
    let mut k = SubsetKey::default();
    let sep = if s.starts_with("outbound_") || s.starts_with("inbound_") {
        "_."
    } else {
        "|"
    };
    let Some((dir, rest)) = s.split_once(sep) else {
        return k;
    };
    k.direction = dir.to_owned();
    let Some((port, rest)) = rest.split_once(sep) else {
        return k;
    };
    k.port = crate::dump::go_atoi(port).unwrap_or(0);
    let Some((subset, rest)) = rest.split_once(sep) else {
        return k;
    };
    k.subset = subset.to_owned();
    if !rest.contains(sep) {
        k.host = rest.to_owned();
    }
    k
}

/// Names with more than three `|`-separated parts are Istio's; others sort by the whole name.
pub(crate) fn sort_key(name: &str) -> SubsetKey {
    if name.split('|').count() > 3 {
        parse_subset_key(name)
    } else {
        SubsetKey {
            host: name.to_owned(),
            ..Default::default()
        }
    }
}

/// istioctl's cluster order (also used for endpoint assignments in `all`).
pub(crate) fn subset_key_less(a: &SubsetKey, b: &SubsetKey) -> bool {
    if a.host != b.host {
        return a.host < b.host;
    }
    if a.subset != b.subset {
        return a.subset < b.subset;
    }
    if a.port != b.port {
        return a.port < b.port;
    }
    a.direction < b.direction
}

/// The TYPE cell: the discovery type's enum name (`STATIC` when unset, as for custom clusters).
pub fn cluster_type(c: &Json) -> String {
    const NAMES: [&str; 5] = ["STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS", "ORIGINAL_DST"];
    match c.get("type") {
        Json::String(s) => s.clone(),
        Json::Null => NAMES[0].into(),
        n => {
            let i = n.uint();
            NAMES
                .get(i as usize)
                .map_or_else(|| i.to_string(), |s| (*s).to_owned())
        }
    }
}

fn sorted(d: &ConfigDump) -> Result<Vec<&Json>, Error> {
    let mut clusters = d.clusters()?;
    let mut keyed: Vec<(SubsetKey, &Json)> = clusters
        .drain(..)
        .map(|c| (sort_key(c.get("name").str()), c))
        .collect();
    sort_slice(&mut keyed, |a, b| subset_key_less(&a.0, &b.0));
    Ok(keyed.into_iter().map(|(_, c)| c).collect())
}

/// The cluster table; `name_column` adds `all`'s `cluster/<name>` column.
pub fn summary(d: &ConfigDump, filter: &ClusterFilter, name_column: bool) -> Result<String, Error> {
    let clusters = sorted(d)?;
    let mut w = TabWriter::new(0, 5);
    let mut header = vec![
        "SERVICE FQDN",
        "PORT",
        "SUBSET",
        "DIRECTION",
        "TYPE",
        "DESTINATION RULE",
    ];
    if name_column {
        header.insert(0, "NAME");
    }
    w.row(&header);
    for c in clusters.into_iter().filter(|c| filter.verify(c)) {
        let name = c.get("name").str();
        let kind = cluster_type(c);
        let dr = describe_management(c.get("metadata"));
        if name.split('|').count() > 3 {
            let k = parse_subset_key(name);
            let subset = if k.subset.is_empty() {
                "-".to_owned()
            } else {
                k.subset
            };
            let mut row = vec![k.host, k.port.to_string(), subset, k.direction, kind, dr];
            if name_column {
                row.insert(0, format!("cluster/{name}"));
            }
            w.row(&row);
        } else if name_column && !name.is_empty() {
            let prefixed = format!("cluster/{name}");
            w.row(&[
                prefixed.clone(),
                prefixed,
                "-".into(),
                "-".into(),
                "-".into(),
                kind,
                dr,
            ]);
        } else {
            // Also in `all` for a nameless cluster: one cell short, as istioctl prints it.
            w.row(&[name.to_owned(), "-".into(), "-".into(), "-".into(), kind, dr]);
        }
    }
    Ok(w.render())
}

/// `-o json|yaml`: the clusters that pass the filter, in istioctl's order.
pub fn dump(d: &ConfigDump, filter: &ClusterFilter, output: Output) -> Result<String, Error> {
    let clusters: Vec<&Json> = sorted(d)?.into_iter().filter(|c| filter.verify(c)).collect();
    Ok(render_objects(
        &clusters,
        "envoy.config.cluster.v3.Cluster",
        output,
    ))
}

/// `proxy-config cluster` in the requested format.
pub fn print(d: &ConfigDump, filter: &ClusterFilter, output: Output) -> Result<String, Error> {
    match output {
        Output::Short => summary(d, filter, false),
        _ => dump(d, filter, output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_keys() {
        let k = parse_subset_key("outbound|9080|v1|reviews.default.svc.cluster.local");
        assert_eq!(
            (k.direction.as_str(), k.port, k.subset.as_str(), k.host.as_str()),
            ("outbound", 9080, "v1", "reviews.default.svc.cluster.local")
        );
        let k = parse_subset_key("inbound|80||");
        assert_eq!(
            (k.direction.as_str(), k.port, k.host.as_str()),
            ("inbound", 80, "")
        );
        let k = parse_subset_key("outbound_.80_.v1_.reviews.default.svc.cluster.local");
        assert_eq!(
            (k.port, k.subset.as_str(), k.host.as_str()),
            (80, "v1", "reviews.default.svc.cluster.local")
        );
        assert_eq!(parse_subset_key("a|b|c|d|e").host, "");
        assert_eq!(parse_subset_key("PassthroughCluster"), SubsetKey::default());
    }
}
