//! EDS: one `ClusterLoadAssignment` per outbound EDS cluster, from the Service's ready endpoints
//! matched to the cluster's port by port name, with Istio's endpoint metadata (reference §4).

use xds::pb::envoy::config::core::v3 as core;
use xds::pb::envoy::config::endpoint::v3 as endpoint;
use xds::pb::google::protobuf::Struct;

use super::{outbound_cluster_name, socket_address, string_value, u32_value, Context};
use crate::snapshot::{Endpoint, Protocol, ServiceInfo, ServicePort};

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

fn assignment(svc: &ServiceInfo, port: &ServicePort) -> endpoint::ClusterLoadAssignment {
    let name = outbound_cluster_name(port.port, &svc.hostname);
    let mut lb_endpoints: Vec<endpoint::LbEndpoint> = svc
        .endpoints_for(port)
        .filter(|e| e.ready)
        .map(|e| endpoint::LbEndpoint {
            host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                endpoint::Endpoint {
                    address: socket_address(&e.ip.to_string(), e.port),
                    ..Default::default()
                },
            )),
            health_status: core::HealthStatus::Healthy as i32,
            metadata: metadata(e, svc, super::CLUSTER_ID),
            load_balancing_weight: u32_value(1),
        })
        .collect();
    lb_endpoints.sort_by_key(|e| format!("{:?}", e.host_identifier));
    lb_endpoints.dedup_by(|a, b| a.host_identifier == b.host_identifier);
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

/// The assignments for `names` (all EDS clusters when empty), skipping names that are not EDS
/// clusters of a known Service. They do not depend on the proxy, so they can be shared.
pub fn endpoints(ctx: &Context<'_>, names: &[String]) -> Vec<endpoint::ClusterLoadAssignment> {
    let wanted: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for svc in ctx.services() {
        if svc.vip.is_none() {
            continue;
        }
        for port in &svc.ports {
            if port.protocol == Protocol::Udp {
                continue;
            }
            let name = outbound_cluster_name(port.port, &svc.hostname);
            if wanted.is_empty() || wanted.contains(name.as_str()) {
                out.push(assignment(svc, port));
            }
        }
    }
    out
}

/// Cluster names whose endpoints belong to these Services (for EDS-only pushes).
pub fn cluster_names(svc: &ServiceInfo) -> Vec<String> {
    svc.ports
        .iter()
        .filter(|p| p.protocol != Protocol::Udp)
        .map(|p| outbound_cluster_name(p.port, &svc.hostname))
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
