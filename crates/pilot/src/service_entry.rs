//! ServiceEntry → Services, as Istio's `serviceentry/conversion.go` does it: one Service per host,
//! named by the host (no Kubernetes short names), in the entry's namespace; `addresses[0]` as the
//! VIP (a CIDR or none ⇒ no VIP: listeners bind 0.0.0.0); `location` → mesh external;
//! `resolution` NONE → passthrough (`ORIGINAL_DST`), STATIC → EDS from `endpoints` (or the pods
//! `workloadSelector` picks), DNS → `STRICT_DNS` to `endpoints` or, without any, to the host itself.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use api::networking::{Location, Resolution as SeResolution, ServiceEntry};

use crate::istio::Resource;
use crate::model::Pod;
use crate::snapshot::{Endpoint, HostEndpoint, Protocol, Resolution, ServiceInfo, ServicePort};

/// The Services one ServiceEntry declares.
pub fn services(
    se: &Resource<ServiceEntry>,
    pods: &BTreeMap<(String, String), Arc<Pod>>,
) -> Vec<ServiceInfo> {
    let spec = &se.spec;
    let resolution = match spec.resolution.unwrap_or(SeResolution::None) {
        SeResolution::None => Resolution::Passthrough,
        SeResolution::Static => Resolution::ClientSideLb,
        SeResolution::Dns => Resolution::Dns,
        SeResolution::DnsRoundRobin => Resolution::DnsRoundRobin,
    };
    let vip: Option<IpAddr> = spec.addresses.first().and_then(|a| a.parse().ok());
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .filter_map(|p| {
            Some(ServicePort {
                name: p.name.clone(),
                port: u16::try_from(p.number).ok()?,
                target_port: (p.target_port != 0)
                    .then(|| crate::model::IntOrString::Int(i64::from(p.target_port))),
                protocol: Protocol::parse(&p.protocol),
            })
        })
        .collect();
    let target = |p: &ServicePort| match &p.target_port {
        Some(crate::model::IntOrString::Int(t)) => u16::try_from(*t).unwrap_or(p.port),
        _ => p.port,
    };
    let mut endpoints = Vec::new();
    let mut dns_endpoints = Vec::new();
    for e in &spec.endpoints {
        for p in &ports {
            let port = e
                .ports
                .get(&p.name)
                .and_then(|n| u16::try_from(*n).ok())
                .unwrap_or_else(|| target(p));
            match e.address.parse::<IpAddr>() {
                Ok(ip) if resolution == Resolution::ClientSideLb => endpoints.push(Endpoint {
                    ip,
                    port,
                    port_name: p.name.clone(),
                    ready: true,
                    pod: None,
                    labels: e.labels.clone(),
                }),
                _ => dns_endpoints.push(HostEndpoint {
                    address: e.address.clone(),
                    port,
                    port_name: p.name.clone(),
                    labels: e.labels.clone(),
                }),
            }
        }
    }
    if let Some(sel) = spec.workload_selector.as_ref().filter(|s| !s.labels.is_empty()) {
        for ((ns, _), pod) in pods.range((se.namespace.clone(), String::new())..) {
            if *ns != se.namespace {
                break;
            }
            let selected = sel
                .labels
                .iter()
                .all(|(k, v)| pod.metadata.labels.get(k) == Some(v));
            let Some(ip) = pod.ip().filter(|_| selected && pod.is_ready()) else {
                continue;
            };
            for p in &ports {
                endpoints.push(Endpoint {
                    ip,
                    port: target(p),
                    port_name: p.name.clone(),
                    ready: true,
                    labels: pod.metadata.labels.clone(),
                    pod: Some(pod.clone()),
                });
            }
        }
    }
    let mesh_external = spec.location != Some(Location::MeshInternal);
    spec.hosts
        .iter()
        .map(|h| {
            let mut dns = dns_endpoints.clone();
            if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
                && spec.endpoints.is_empty()
                && !h.starts_with('*')
            {
                // DNS without endpoints: the host itself is the endpoint.
                dns = ports
                    .iter()
                    .map(|p| HostEndpoint {
                        address: h.clone(),
                        port: target(p),
                        port_name: p.name.clone(),
                        labels: BTreeMap::new(),
                    })
                    .collect();
            }
            ServiceInfo {
                name: h.clone(),
                namespace: se.namespace.clone(),
                hostname: h.clone(),
                vip,
                ports: ports.clone(),
                selector: None,
                endpoints: endpoints.clone(),
                creation: se.creation.clone(),
                resolution,
                mesh_external,
                dns_endpoints: dns,
                service_entry: Some(se.key()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{parse_manifests, Object};

    fn entries(yaml: &str) -> Vec<ServiceInfo> {
        let objs = parse_manifests(std::path::Path::new("se.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
        let ix = crate::istio::IstioIndex::build(objs.iter().filter_map(|o| match o {
            Object::Istio(c) => Some(&**c),
            _ => None,
        }));
        ix.service_entries
            .iter()
            .flat_map(|se| services(se, &BTreeMap::new()))
            .collect()
    }

    #[test]
    fn resolutions_map_as_istio_converts_them() {
        let s = entries(
            "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: egress}\n\
             spec:\n  hosts: [api.example.com, www.example.com]\n  ports: [{number: 443, name: https, protocol: HTTPS}]\n  resolution: DNS\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].hostname, "api.example.com");
        assert!(s[0].mesh_external);
        assert_eq!(s[0].resolution, Resolution::Dns);
        assert_eq!(s[0].vip, None);
        assert_eq!(s[0].dns_endpoints[0].address, "api.example.com");
        assert_eq!(s[0].ports[0].protocol, Protocol::Https);
        let s = entries(
            "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {name: db, namespace: egress}\n\
             spec:\n  hosts: [db.internal]\n  addresses: [198.19.9.9]\n  location: MESH_INTERNAL\n  ports: [{number: 5432, name: tcp, protocol: TCP, targetPort: 15432}]\n\
             \x20 resolution: STATIC\n  endpoints: [{address: 198.18.9.1, labels: {version: v1}}, {address: 198.18.9.2, ports: {tcp: 6543}}]\n",
        );
        assert!(!s[0].mesh_external);
        assert_eq!(
            s[0].vip,
            Some("198.19.9.9".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])))
        );
        let eps: Vec<(String, u16)> = s[0]
            .endpoints
            .iter()
            .map(|e| (e.ip.to_string(), e.port))
            .collect();
        assert_eq!(eps, [("198.18.9.1".into(), 15432), ("198.18.9.2".into(), 6543)]);
        assert_eq!(s[0].endpoints[0].labels["version"], "v1");
    }
}
