//! The mesh's kube-dns: `skiffctl local dns --zone FILE` runs in the `kube-system/coredns` pod
//! and answers `cluster.local` from the zone file the supervisor rewrites whenever Services or
//! pods change (the way CoreDNS follows the API server). The server itself is `cluster-dns`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The zone file: what kube-dns would read from the API server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ZoneFile {
    pub namespaces: Vec<String>,
    pub services: Vec<ZoneService>,
    pub pods: Vec<ZonePod>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZoneService {
    pub namespace: String,
    pub name: String,
    /// None for a headless Service.
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ZonePort>,
    /// Ready and not-ready endpoints (headless Services answer with the ready ones).
    pub endpoints: Vec<(Ipv4Addr, bool)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZonePort {
    pub name: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    pub port: u16,
    pub target_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZonePod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
}

/// Converts the file into the server's model.
pub fn cluster_data(z: &ZoneFile) -> cluster_dns::ClusterData {
    use cluster_dns::{ClusterData, Endpoint, Pod, PortProtocol, Service, ServiceKind, ServicePort};
    ClusterData {
        namespaces: z.namespaces.clone(),
        services: z
            .services
            .iter()
            .map(|s| Service {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                kind: match s.cluster_ip {
                    Some(ip) => ServiceKind::ClusterIp(vec![IpAddr::V4(ip)]),
                    None => ServiceKind::Headless,
                },
                ports: s
                    .ports
                    .iter()
                    .map(|p| ServicePort {
                        name: p.name.clone(),
                        protocol: match p.protocol.as_str() {
                            "UDP" => PortProtocol::Udp,
                            "SCTP" => PortProtocol::Sctp,
                            _ => PortProtocol::Tcp,
                        },
                        port: p.port,
                        target_port: p.target_port,
                    })
                    .collect(),
                endpoints: s
                    .endpoints
                    .iter()
                    .map(|(ip, ready)| Endpoint {
                        ip: IpAddr::V4(*ip),
                        hostname: None,
                        ready: *ready,
                    })
                    .collect(),
                publish_not_ready_addresses: false,
            })
            .collect(),
        pods: z
            .pods
            .iter()
            .map(|p| Pod {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                ips: vec![IpAddr::V4(p.ip)],
            })
            .collect(),
    }
}

fn load(path: &Path) -> Result<cluster_dns::ClusterData> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let z: ZoneFile =
        serde_json::from_str(&text).with_context(|| format!("{} is not a zone file", path.display()))?;
    Ok(cluster_data(&z))
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Serves `cluster.local` on port 53 (UDP and TCP) of the current network namespace, following
/// the zone file, until SIGTERM.
pub fn serve(zone_path: &Path, port: u16) -> Result<()> {
    let config = cluster_dns::ZoneConfig {
        nameservers: vec![IpAddr::V4(crate::net::DNS_VIP)],
        ..Default::default()
    };
    let data = load(zone_path)?;
    let zone = cluster_dns::Zone::new(&config, &data).map_err(|e| anyhow::anyhow!("{e}"))?;
    let handle = cluster_dns::ZoneHandle::new(zone);
    let udp =
        std::net::UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("binding UDP port {port}"))?;
    let tcp =
        std::net::TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding TCP port {port}"))?;
    udp.set_nonblocking(true)?;
    tcp.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let udp = tokio::net::UdpSocket::from_std(udp)?;
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        let watcher = {
            let handle = handle.clone();
            let path = zone_path.to_owned();
            async move {
                let mut seen = mtime(&path);
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let now = mtime(&path);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    match load(&path).map(|d| handle.update(&config, &d)) {
                        Ok(Ok(())) => tracing::info!("zone reloaded"),
                        // The last good zone keeps answering.
                        Ok(Err(e)) => tracing::warn!("zone rejected: {e}"),
                        Err(e) => tracing::warn!("zone file: {e:#}"),
                    }
                }
            }
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tracing::info!(port, "serving cluster.local");
        tokio::select! {
            r = cluster_dns::serve(udp, tcp, handle) => r.map_err(|e| anyhow::anyhow!("{e}")),
            () = watcher => Ok(()),
            _ = term.recv() => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_file_becomes_cluster_data() {
        let z = ZoneFile {
            namespaces: vec!["sidecar".into()],
            services: vec![ZoneService {
                namespace: "sidecar".into(),
                name: "nginx".into(),
                cluster_ip: Some(Ipv4Addr::new(198, 19, 0, 21)),
                ports: vec![ZonePort {
                    name: "http".into(),
                    protocol: "TCP".into(),
                    port: 80,
                    target_port: Some(80),
                }],
                endpoints: vec![(Ipv4Addr::new(198, 18, 0, 11), true)],
            }],
            pods: vec![ZonePod {
                namespace: "sidecar".into(),
                name: "nginx-1".into(),
                ip: Ipv4Addr::new(198, 18, 0, 11),
            }],
        };
        let data = cluster_data(&z);
        let zone = cluster_dns::Zone::new(&cluster_dns::ZoneConfig::default(), &data).unwrap();
        let name = cluster_dns::proto::rr::Name::from_ascii("nginx.sidecar.svc.cluster.local.").unwrap();
        let answer = zone.lookup(&name, cluster_dns::proto::rr::RecordType::A);
        assert!(format!("{answer:?}").contains("198.19.0.21"), "{answer:?}");
    }
}
