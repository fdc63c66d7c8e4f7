//! Who is connecting: Istio's node identity (`sidecar~IP~POD.NS~NS.svc.cluster.local`) and the
//! node metadata pilot-agent sends (`LABELS`, `CLUSTER_ID`, `ISTIO_VERSION`, `INSTANCE_IPS`…).

use std::collections::BTreeMap;
use std::net::IpAddr;

use xds::pb::envoy::config::core::v3::Node;
use xds::pb::google::protobuf::value::Kind;
use xds::pb::google::protobuf::Struct;

/// Why a node cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error(
        "node id {0:?}: expected TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local \
         (e.g. sidecar~10.244.0.7~toolbox-97948fc8-ptlct.sidecar~sidecar.svc.cluster.local)"
    )]
    Shape(String),
    #[error("node id {id:?}: type {kind:?} is not served (Skiff serves sidecar proxies)")]
    Type { id: String, kind: String },
    #[error("node id {id:?}: {ip:?} is not an IP address")]
    Ip { id: String, ip: String },
}

/// The proxy's kind (the first part of the node id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeType {
    Sidecar,
    Router,
}

/// A connected proxy, as generation needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Proxy {
    pub node_type: NodeType,
    pub id: String,
    /// The first IP of the node id (`INSTANCE_IPS` adds others).
    pub ip: IpAddr,
    pub ips: Vec<IpAddr>,
    pub pod: String,
    pub namespace: String,
    /// `NS.svc.cluster.local`: where short names are expanded from.
    pub dns_domain: String,
    /// Pod labels from `LABELS` metadata (the registry's pod fills them in when absent).
    pub labels: BTreeMap<String, String>,
    pub cluster_id: String,
    pub istio_version: String,
}

fn meta_str(meta: Option<&Struct>, key: &str) -> Option<String> {
    match meta?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

impl Proxy {
    /// Parses Istio's node id and the metadata Skiff uses.
    pub fn from_node(node: &Node) -> Result<Proxy, NodeError> {
        let parts: Vec<&str> = node.id.split('~').collect();
        let [kind, ip, pod_ns, domain] = parts.as_slice() else {
            return Err(NodeError::Shape(node.id.clone()));
        };
        let node_type = match *kind {
            "sidecar" => NodeType::Sidecar,
            "router" => NodeType::Router,
            other => {
                return Err(NodeError::Type {
                    id: node.id.clone(),
                    kind: other.to_owned(),
                })
            }
        };
        let ip: IpAddr = ip.parse().map_err(|_| NodeError::Ip {
            id: node.id.clone(),
            ip: (*ip).to_owned(),
        })?;
        let Some((pod, namespace)) = pod_ns.rsplit_once('.') else {
            return Err(NodeError::Shape(node.id.clone()));
        };
        if pod.is_empty() || namespace.is_empty() {
            return Err(NodeError::Shape(node.id.clone()));
        }
        let meta = node.metadata.as_ref();
        let labels = match meta
            .and_then(|m| m.fields.get("LABELS"))
            .and_then(|v| v.kind.as_ref())
        {
            Some(Kind::StructValue(s)) => s
                .fields
                .iter()
                .filter_map(|(k, v)| match &v.kind {
                    Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        let mut ips = vec![ip];
        if let Some(list) = meta_str(meta, "INSTANCE_IPS") {
            for extra in list.split(',').filter_map(|s| s.trim().parse().ok()) {
                if !ips.contains(&extra) {
                    ips.push(extra);
                }
            }
        }
        Ok(Proxy {
            node_type,
            id: node.id.clone(),
            ip,
            ips,
            pod: pod.to_owned(),
            namespace: namespace.to_owned(),
            dns_domain: (*domain).to_owned(),
            labels,
            cluster_id: meta_str(meta, "CLUSTER_ID").unwrap_or_else(|| "Kubernetes".into()),
            istio_version: meta_str(meta, "ISTIO_VERSION").unwrap_or_default(),
        })
    }

    /// A sidecar proxy for tests and tools: the node id Istio would give pod `pod` in `namespace`.
    pub fn sidecar(ip: IpAddr, pod: &str, namespace: &str) -> Proxy {
        Proxy {
            node_type: NodeType::Sidecar,
            id: format!("sidecar~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local"),
            ip,
            ips: vec![ip],
            pod: pod.to_owned(),
            namespace: namespace.to_owned(),
            dns_domain: format!("{namespace}.svc.cluster.local"),
            labels: BTreeMap::new(),
            cluster_id: "Kubernetes".into(),
            istio_version: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_sidecar_node_ids() {
        let node = Node {
            id: "sidecar~10.244.0.7~toolbox-97948fc8-ptlct.sidecar~sidecar.svc.cluster.local".into(),
            ..Default::default()
        };
        let p = Proxy::from_node(&node).unwrap();
        assert_eq!(p.pod, "toolbox-97948fc8-ptlct");
        assert_eq!(p.namespace, "sidecar");
        assert_eq!(p.dns_domain, "sidecar.svc.cluster.local");
        assert_eq!(p, {
            let mut s = Proxy::sidecar(p.ip, &p.pod, "sidecar");
            s.id = node.id.clone();
            s
        });
        for bad in [
            "toolbox",
            "sidecar~x~a.b~c",
            "sidecar~1.2.3.4~nodots~c",
            "gateway~1.2.3.4~a.b~c",
        ] {
            let node = Node {
                id: bad.into(),
                ..Default::default()
            };
            assert!(Proxy::from_node(&node).is_err(), "{bad}");
        }
    }
}
