//! EDS: one `ClusterLoadAssignment` per outbound EDS cluster, from the Service's ready endpoints
//! matched to the cluster's port by port name, with Istio's endpoint metadata (reference §4).

use xds::pb::envoy::config::core::v3 as core;
use xds::pb::envoy::config::endpoint::v3 as endpoint;
use xds::pb::google::protobuf::Struct;

use super::{outbound_cluster_name, socket_address, string_value, u32_value, Context};
use crate::proxy::NodeType;
use crate::snapshot::{Endpoint, Protocol, Resolution, ServiceInfo, ServicePort};

/// `istio.workload` = `name;namespace;canonical service;canonical revision;cluster`.
fn metadata(ep: &Endpoint, svc: &ServiceInfo, cluster_id: &str) -> Option<core::Metadata> {
    let pod = ep.pod.as_ref()?;
    let labels = &pod.metadata.labels;
    let mut filter_metadata = std::collections::HashMap::new();
    if labels.get("security.istio.io/tlsMode").map(String::as_str) == Some("istio") {
        filter_metadata.insert(
            "envoy.transport_socket_match".to_owned(),
            Struct {
                fields: [("tlsMode".to_owned(), string_value("istio"))]
                    .into_iter()
                    .collect(),
            },
        );
    }
    let workload = workload_name(pod);
    let canonical = labels
        .get("service.istio.io/canonical-name")
        .or_else(|| labels.get("app.kubernetes.io/name"))
        .or_else(|| labels.get("app"))
        .cloned()
        .unwrap_or_else(|| workload.clone());
    let revision = labels
        .get("service.istio.io/canonical-revision")
        .or_else(|| labels.get("app.kubernetes.io/version"))
        .or_else(|| labels.get("version"))
        .cloned()
        .unwrap_or_else(|| "latest".into());
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| svc.namespace.clone());
    filter_metadata.insert(
        "istio".to_owned(),
        Struct {
            fields: [(
                "workload".to_owned(),
                string_value(&format!("{workload};{ns};{canonical};{revision};{cluster_id}")),
            )]
            .into_iter()
            .collect(),
        },
    );
    Some(core::Metadata {
        filter_metadata,
        ..Default::default()
    })
}

/// The workload a pod belongs to, as Istio derives it: the Deployment for ReplicaSet-named pods
/// (`nginx-deployment-7fc7f5758-46mzh` → `nginx-deployment`), else the pod name.
pub fn workload_name(pod: &crate::model::Pod) -> String {
    let name = &pod.metadata.name;
    if let Some(hash) = pod.metadata.labels.get("pod-template-hash") {
        if let Some(i) = name.find(&format!("-{hash}-")) {
            return name[..i].to_owned();
        }
    }
    let parts: Vec<&str> = name.rsplitn(3, '-').collect();
    match parts.as_slice() {
        [suffix, hash, base]
            if suffix.len() == 5
                && (8..=10).contains(&hash.len())
                && hash.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            (*base).to_owned()
        }
        _ => name.clone(),
    }
}

fn assignment(
    svc: &ServiceInfo,
    port: &ServicePort,
    name: String,
    subset: Option<&std::collections::BTreeMap<String, String>>,
) -> endpoint::ClusterLoadAssignment {
    // Ordered by address text then port text (a stable order, so equal sets encode equally),
    // one entry per address:port.
    let mut chosen: Vec<(String, String, _)> = svc
        .endpoints_for(port)
        .filter(|e| e.ready)
        .filter(|e| subset.is_none_or(|want| want.iter().all(|(k, v)| e.labels.get(k) == Some(v))))
        .map(|e| (e.ip.to_string(), e.port.to_string(), e))
        .collect();
    chosen.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    chosen.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let lb_endpoints: Vec<endpoint::LbEndpoint> = chosen
        .into_iter()
        .map(|(ip, _, e)| endpoint::LbEndpoint {
            host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                endpoint::Endpoint {
                    address: socket_address(&ip, e.port),
                    ..Default::default()
                },
            )),
            health_status: core::HealthStatus::Healthy as i32,
            metadata: metadata(e, svc, super::CLUSTER_ID),
            load_balancing_weight: u32_value(1),
        })
        .collect();
    if lb_endpoints.is_empty() {
        return endpoint::ClusterLoadAssignment {
            cluster_name: name,
            ..Default::default()
        };
    }
    let weight = lb_endpoints.len() as u32;
    endpoint::ClusterLoadAssignment {
        cluster_name: name,
        endpoints: vec![endpoint::LocalityLbEndpoints {
            locality: Some(core::Locality::default()),
            lb_endpoints,
            load_balancing_weight: u32_value(weight),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Whether a Service's clusters get their endpoints by EDS for this proxy (Istio's
/// `convertResolution`: ClientSideLB, and headless Services for gateways).
fn uses_eds(ctx: &Context<'_>, svc: &ServiceInfo) -> bool {
    match svc.resolution {
        Resolution::ClientSideLb => true,
        Resolution::Passthrough => ctx.proxy.node_type == NodeType::Router && svc.service_entry.is_none(),
        Resolution::Dns | Resolution::DnsRoundRobin => false,
    }
}

/// The assignments for `names` (all EDS clusters when empty): each Service port's, and one per
/// subset of its DestinationRule (endpoints whose labels carry the subset's). They depend on the
/// proxy only through the DestinationRule it sees, so proxies of one namespace share them.
pub fn endpoints(ctx: &Context<'_>, names: &[String]) -> Vec<endpoint::ClusterLoadAssignment> {
    let wanted: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    let want = |n: &str| wanted.is_empty() || wanted.contains(n);
    let mut out = Vec::new();
    for svc in ctx.services() {
        if !uses_eds(ctx, svc) {
            continue;
        }
        let dr = ctx.destination_rule(&svc.hostname);
        for port in &svc.ports {
            if port.protocol == Protocol::Udp {
                continue;
            }
            let name = outbound_cluster_name(port.port, &svc.hostname);
            if want(&name) {
                out.push(assignment(svc, port, name, None));
            }
            for subset in dr.iter().flat_map(|d| &d.spec.subsets) {
                let passthrough = subset
                    .traffic_policy
                    .as_ref()
                    .and_then(|p| p.load_balancer.as_ref())
                    .and_then(|l| l.simple)
                    == Some(api::networking::SimpleLb::Passthrough);
                let name = format!("outbound|{}|{}|{}", port.port, subset.name, svc.hostname);
                if !passthrough && want(&name) {
                    out.push(assignment(svc, port, name, Some(&subset.labels)));
                }
            }
        }
    }
    out
}

/// Cluster names whose endpoints belong to this Service (for EDS-only pushes): its ports, and
/// the subsets of every DestinationRule naming its host.
pub fn cluster_names(snap: &crate::snapshot::Snapshot, svc: &ServiceInfo) -> Vec<String> {
    let subsets: Vec<&str> = snap
        .config
        .destination_rules
        .iter()
        .filter(|d| api::host::subset_of(&svc.hostname, &d.spec.host))
        .flat_map(|d| d.spec.subsets.iter().map(|s| s.name.as_str()))
        .collect();
    svc.ports
        .iter()
        .filter(|p| p.protocol != Protocol::Udp)
        .flat_map(|p| {
            std::iter::once(outbound_cluster_name(p.port, &svc.hostname)).chain(
                subsets
                    .iter()
                    .map(move |s| format!("outbound|{}|{s}|{}", p.port, svc.hostname)),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_strip_replicaset_suffixes() {
        let pod = |name: &str, hash: Option<&str>| {
            let mut p = crate::model::Pod::default();
            p.metadata.name = name.into();
            if let Some(h) = hash {
                p.metadata.labels.insert("pod-template-hash".into(), h.into());
            }
            p
        };
        assert_eq!(
            workload_name(&pod("nginx-deployment-7fc7f5758-46mzh", Some("7fc7f5758"))),
            "nginx-deployment"
        );
        assert_eq!(workload_name(&pod("toolbox-97948fc8-ptlct", None)), "toolbox");
        assert_eq!(workload_name(&pod("web", None)), "web");
    }
}
