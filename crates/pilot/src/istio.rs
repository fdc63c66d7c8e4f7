//! The Istio resources as the translation reads them: validated specs with Istio's name
//! resolution already applied (short hosts → FQDN in the resource's namespace, gateway names →
//! `namespace/name`, as `pilot/pkg/model` does when it builds a push context), sorted as Istio
//! sorts configs (creation time, then name, then namespace), and the lookups translation needs:
//! the DestinationRule for a host as a proxy sees it, the VirtualServices bound to the mesh or to a
//! gateway, the gateways a router runs, and a proxy's Sidecar scope.

use std::collections::BTreeMap;
use std::sync::Arc;

use api::host;
use api::networking::{DestinationRule, Gateway, OutboundMode, ServiceEntry, Sidecar, VirtualService};
use api::Spec;

use crate::model::IstioConfig;

/// The mesh's root namespace (Istio's default `rootNamespace`): its Sidecar without a selector
/// and its DestinationRules apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// One Istio resource: identity and (resolved) spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource<T> {
    pub namespace: String,
    pub name: String,
    pub creation: Option<String>,
    pub spec: T,
}

impl<T> Resource<T> {
    /// `filter_metadata.istio.config` as Istio writes it (`util.BuildConfigInfoMetadata`):
    /// `/apis/networking.istio.io/v1alpha3/namespaces/NS/virtual-service/NAME`. `proxy-config`
    /// prints the last two segments as `name.namespace`.
    pub fn config_path(&self, kind_path: &str) -> String {
        format!(
            "/apis/networking.istio.io/v1alpha3/namespaces/{}/{kind_path}/{}",
            self.namespace, self.name
        )
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Whether a resource in `namespace` with `export_to` is visible from `to` (Istio's default is
/// `*`; `.` is the resource's own namespace; `~` is nobody).
pub fn exported_to(export_to: &[String], namespace: &str, to: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == to || (e == "." && namespace == to))
}

/// Every applied Istio resource of the registry, resolved and sorted.
#[derive(Debug, Default, Clone)]
pub struct IstioIndex {
    pub virtual_services: Vec<Arc<Resource<VirtualService>>>,
    pub destination_rules: Vec<Arc<Resource<DestinationRule>>>,
    pub gateways: Vec<Arc<Resource<Gateway>>>,
    pub service_entries: Vec<Arc<Resource<ServiceEntry>>>,
    pub sidecars: Vec<Arc<Resource<Sidecar>>>,
}

fn resource<T>(c: &IstioConfig, ns: &str, spec: T) -> Arc<Resource<T>> {
    Arc::new(Resource {
        namespace: ns.to_owned(),
        name: c.metadata.name.clone(),
        creation: c.metadata.creation_timestamp.clone(),
        spec,
    })
}

/// Istio's `resolveVirtualServiceShortnames`.
fn resolve_virtual_service(mut vs: VirtualService, ns: &str) -> VirtualService {
    for h in &mut vs.hosts {
        *h = host::resolve_short_name(h, ns);
    }
    for g in &mut vs.gateways {
        *g = host::resolve_gateway_name(g, ns);
    }
    for r in &mut vs.http {
        for m in &mut r.matches {
            for g in &mut m.gateways {
                *g = host::resolve_gateway_name(g, ns);
            }
        }
        for d in r.route.iter_mut().filter_map(|d| d.destination.as_mut()) {
            d.host = host::resolve_short_name(&d.host, ns);
        }
        if let Some(m) = &mut r.mirror {
            m.host = host::resolve_short_name(&m.host, ns);
        }
    }
    for r in &mut vs.tcp {
        for m in &mut r.matches {
            for g in &mut m.gateways {
                *g = host::resolve_gateway_name(g, ns);
            }
        }
        for d in r.route.iter_mut().filter_map(|d| d.destination.as_mut()) {
            d.host = host::resolve_short_name(&d.host, ns);
        }
    }
    for r in &mut vs.tls {
        for m in &mut r.matches {
            for g in &mut m.gateways {
                *g = host::resolve_gateway_name(g, ns);
            }
        }
        for d in r.route.iter_mut().filter_map(|d| d.destination.as_mut()) {
            d.host = host::resolve_short_name(&d.host, ns);
        }
    }
    vs
}

fn sort<T>(v: &mut [Arc<Resource<T>>]) {
    v.sort_by(|a, b| (&a.creation, &a.name, &a.namespace).cmp(&(&b.creation, &b.name, &b.namespace)));
}

impl IstioIndex {
    pub fn build<'a>(configs: impl IntoIterator<Item = &'a IstioConfig>) -> IstioIndex {
        let mut ix = IstioIndex::default();
        for c in configs {
            let Some(spec) = &c.parsed else { continue };
            let ns = c.metadata.namespace.clone().unwrap_or_default();
            match &**spec {
                Spec::VirtualService(vs) => {
                    ix.virtual_services
                        .push(resource(c, &ns, resolve_virtual_service(vs.clone(), &ns)))
                }
                Spec::DestinationRule(dr) => {
                    let mut dr = dr.clone();
                    dr.host = host::resolve_short_name(&dr.host, &ns);
                    ix.destination_rules.push(resource(c, &ns, dr));
                }
                Spec::Gateway(gw) => ix.gateways.push(resource(c, &ns, gw.clone())),
                Spec::ServiceEntry(se) => ix.service_entries.push(resource(c, &ns, se.clone())),
                Spec::Sidecar(sc) => ix.sidecars.push(resource(c, &ns, sc.clone())),
            }
        }
        sort(&mut ix.virtual_services);
        sort(&mut ix.destination_rules);
        sort(&mut ix.gateways);
        sort(&mut ix.service_entries);
        sort(&mut ix.sidecars);
        ix
    }

    /// The DestinationRule that applies to `hostname` for a proxy in `proxy_ns` (Istio's
    /// `PushContext.destinationRule`): the proxy's namespace first, then the service's namespace,
    /// then the root namespace; within one, the most specific host (exact before wildcards) and
    /// then the oldest rule. Rules with a workload selector are not supported and skipped.
    pub fn destination_rule(
        &self,
        proxy_ns: &str,
        service_ns: &str,
        hostname: &str,
    ) -> Option<&Arc<Resource<DestinationRule>>> {
        let best_in = |ns: &str, local: bool| {
            self.destination_rules
                .iter()
                .filter(|d| d.namespace == ns && d.spec.workload_selector.is_none())
                .filter(|d| local || exported_to(&d.spec.export_to, &d.namespace, proxy_ns))
                .filter(|d| host::subset_of(hostname, &d.spec.host))
                .min_by_key(|d| {
                    // Exact host first, then the longest (most specific) wildcard.
                    let exact = d.spec.host == hostname;
                    (!exact, usize::MAX - d.spec.host.len())
                })
        };
        if proxy_ns != ROOT_NAMESPACE {
            if let Some(d) = best_in(proxy_ns, true) {
                return Some(d);
            }
        }
        if !service_ns.is_empty() {
            if let Some(d) = best_in(service_ns, service_ns == proxy_ns) {
                return Some(d);
            }
        }
        best_in(ROOT_NAMESPACE, proxy_ns == ROOT_NAMESPACE)
    }

    /// The VirtualServices a gateway named `gateway` (`ns/name`) serves, for a router in
    /// `proxy_ns` (Istio's `VirtualServicesForGateway`).
    pub fn virtual_services_for_gateway(
        &self,
        proxy_ns: &str,
        gateway: &str,
    ) -> Vec<&Arc<Resource<VirtualService>>> {
        self.virtual_services
            .iter()
            .filter(|vs| exported_to(&vs.spec.export_to, &vs.namespace, proxy_ns))
            .filter(|vs| vs.spec.gateways.iter().any(|g| g == gateway))
            .collect()
    }

    /// The Gateways whose selector picks a workload with `labels` (any namespace, as Istio does
    /// with `PILOT_SCOPE_GATEWAY_TO_NAMESPACE` off).
    pub fn gateways_for(&self, labels: &BTreeMap<String, String>) -> Vec<&Arc<Resource<Gateway>>> {
        self.gateways
            .iter()
            .filter(|g| {
                !g.spec.selector.is_empty() && g.spec.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect()
    }

    /// The Sidecar resource of a workload (Istio's precedence): one in its namespace selecting
    /// its labels, else its namespace's Sidecar without a selector, else the root namespace's.
    pub fn sidecar_for(
        &self,
        ns: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<&Arc<Resource<Sidecar>>> {
        let selects = |s: &Resource<Sidecar>| match &s.spec.workload_selector {
            Some(ws) if !ws.labels.is_empty() => ws.labels.iter().all(|(k, v)| labels.get(k) == Some(v)),
            _ => false,
        };
        let unselected = |s: &Resource<Sidecar>| {
            s.spec
                .workload_selector
                .as_ref()
                .is_none_or(|w| w.labels.is_empty())
        };
        self.sidecars
            .iter()
            .find(|s| s.namespace == ns && selects(s))
            .or_else(|| self.sidecars.iter().find(|s| s.namespace == ns && unselected(s)))
            .or_else(|| {
                self.sidecars
                    .iter()
                    .find(|s| s.namespace == ROOT_NAMESPACE && unselected(s))
            })
    }

    /// Whether any VirtualService routes by source labels or source namespace (then a proxy's
    /// routes depend on its labels and cannot be shared by namespace alone).
    pub fn uses_source_matches(&self) -> bool {
        self.virtual_services.iter().any(|vs| {
            vs.spec
                .http
                .iter()
                .flat_map(|r| &r.matches)
                .any(|m| !m.source_labels.is_empty() || !m.source_namespace.is_empty())
                || vs
                    .spec
                    .tcp
                    .iter()
                    .flat_map(|r| &r.matches)
                    .any(|m| !m.source_labels.is_empty())
                || vs
                    .spec
                    .tls
                    .iter()
                    .flat_map(|r| &r.matches)
                    .any(|m| !m.source_labels.is_empty())
        })
    }
}

/// A Sidecar's `egress` hosts as (namespace, host) pairs; `.` resolved to the Sidecar's namespace.
/// An empty result means the Sidecar has no egress listener (everything stays visible).
pub fn egress_hosts(sc: &Resource<Sidecar>) -> Vec<(String, String)> {
    sc.spec
        .egress
        .iter()
        .flat_map(|e| &e.hosts)
        .filter_map(|h| {
            let (ns, name) = h.split_once('/')?;
            let ns = if ns == "." {
                sc.namespace.clone()
            } else {
                ns.to_owned()
            };
            Some((ns, name.to_owned()))
        })
        .collect()
}

/// Istio's egress-host rule: `ns/host` imports `host` (wildcards allowed) from namespace `ns`
/// (`*` any, `~` none).
pub fn egress_imports(hosts: &[(String, String)], namespace: &str, hostname: &str) -> bool {
    hosts.iter().any(|(ns, h)| {
        (ns == "*" || ns == namespace) && ns != "~" && (h == "*" || host::matches(hostname, h))
    })
}

/// The outbound traffic policy a proxy runs with: its Sidecar's, else the mesh's.
pub fn outbound_mode(sidecar: Option<&Resource<Sidecar>>, mesh: OutboundMode) -> OutboundMode {
    sidecar
        .and_then(|s| s.spec.outbound_traffic_policy.as_ref())
        .and_then(|p| p.mode)
        .unwrap_or(mesh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{parse_manifests, Object};

    fn index(yaml: &str) -> IstioIndex {
        let objs = parse_manifests(std::path::Path::new("t.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
        IstioIndex::build(objs.iter().filter_map(|o| match o {
            Object::Istio(c) => Some(&**c),
            _ => None,
        }))
    }

    #[test]
    fn short_names_resolve_in_the_resource_namespace() {
        let ix = index(
            "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: simple, namespace: simple}\n\
             spec:\n  gateways: [simple, mesh]\n  hosts: [simple.zhongmingmao.io, web]\n  http:\n  - route: [{destination: {host: web}, weight: 50}, {destination: {host: httpserver.securesvc.svc}, weight: 50}]\n",
        );
        let vs = &ix.virtual_services[0].spec;
        assert_eq!(vs.gateways, ["simple/simple", "mesh"]);
        assert_eq!(
            vs.hosts,
            ["simple.zhongmingmao.io", "web.simple.svc.cluster.local"]
        );
        let hosts: Vec<&str> = vs.http[0]
            .route
            .iter()
            .map(|d| d.destination.as_ref().map_or("", |d| d.host.as_str()))
            .collect();
        assert_eq!(
            hosts,
            ["web.simple.svc.cluster.local", "httpserver.securesvc.svc"]
        );
        assert_eq!(
            ix.virtual_services_for_gateway("istio-system", "simple/simple")
                .len(),
            1
        );
    }

    #[test]
    fn destination_rule_precedence() {
        let dr = |ns: &str, name: &str, host: &str| {
            format!(
                "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\n\
                 spec: {{host: '{host}', trafficPolicy: {{loadBalancer: {{simple: RANDOM}}}}}}\n---\n"
            )
        };
        let ix = index(&format!(
            "{}{}{}{}",
            dr("web", "svc-ns", "web"),
            dr("client", "proxy-ns", "web.web.svc.cluster.local"),
            dr("istio-system", "root", "*.svc.cluster.local"),
            dr("web", "wild", "*.web.svc.cluster.local")
        ));
        let pick = |proxy_ns: &str| {
            ix.destination_rule(proxy_ns, "web", "web.web.svc.cluster.local")
                .map(|d| d.name.clone())
        };
        assert_eq!(pick("client").as_deref(), Some("proxy-ns"));
        assert_eq!(
            pick("other").as_deref(),
            Some("svc-ns"),
            "exact host beats the wildcard"
        );
        assert_eq!(
            ix.destination_rule("other", "x", "x.x.svc.cluster.local")
                .map(|d| d.name.as_str()),
            Some("root")
        );
    }

    #[test]
    fn egress_hosts_scope() {
        let hosts = vec![
            ("sidecar".to_owned(), "*".to_owned()),
            (
                "istio-system".to_owned(),
                "istiod.istio-system.svc.cluster.local".to_owned(),
            ),
            ("*".to_owned(), "*.example.com".to_owned()),
        ];
        assert!(egress_imports(
            &hosts,
            "sidecar",
            "nginx.sidecar.svc.cluster.local"
        ));
        assert!(egress_imports(
            &hosts,
            "istio-system",
            "istiod.istio-system.svc.cluster.local"
        ));
        assert!(!egress_imports(
            &hosts,
            "istio-system",
            "istio-ingressgateway.istio-system.svc.cluster.local"
        ));
        assert!(egress_imports(&hosts, "external", "api.example.com"));
        assert!(!egress_imports(
            &hosts,
            "canary",
            "canary.canary.svc.cluster.local"
        ));
    }
}
