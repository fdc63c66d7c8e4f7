//! The pod network, routed like Calico: a "node" namespace holds one veth per pod and a /32
//! route to each pod IP; each pod has `eth0` with its /32 and a default route via 169.254.1.1.
//! Every packet between pods crosses the node's IP stack, so kube-proxy's DNAT (Service VIP →
//! endpoint) sees both directions without masquerading, as on a real node. The only thing on the
//! host is the ingress link ([`create_ingress_link`]): one veth with a /30 from 198.18.255.0/24
//! and its connected route, so the host can reach the ingress gateway.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The node-side gateway every pod routes through (Calico's choice).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// kube-dns' Service address (Kubernetes' 10.96.0.10, moved into the VIP range).
pub const DNS_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);

/// The nth pod address: 198.18.0.10 upwards.
pub fn pod_ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 10)) + n)
}

/// The nth Service VIP: 198.19.0.20 upwards (below are reserved: .1 kubernetes, .10 kube-dns).
pub fn service_vip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 20)) + n)
}

pub fn in_vip_range(ip: Ipv4Addr) -> bool {
    ip.octets()[0] == 198 && ip.octets()[1] == 19
}

pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    // /proc/sys/net is per network namespace: write it from inside.
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "sysctl", "-qw", &format!("{key}={value}")])
        .output()
        .context("running sysctl")?;
    if !out.status.success() {
        bail!(
            "sysctl {key}={value} in {netns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates the node namespace: forwarding on, the gateway address on `lo`.
pub fn create_node(netns: &str) -> Result<()> {
    if !netns_exists(netns) {
        ip(&["netns", "add", netns])?;
    }
    ip(&["-n", netns, "link", "set", "lo", "up"])?;
    sysctl(netns, "net.ipv4.ip_forward", "1")?;
    // The VIP range answers nowhere but through DNAT; unmatched VIP traffic is refused fast.
    let _ = ip(&["-n", netns, "addr", "add", &format!("{GATEWAY}/32"), "dev", "lo"]);
    let _ = ip(&["-n", netns, "route", "add", "unreachable", "198.19.0.0/16"]);
    Ok(())
}

/// Creates a pod's namespace and wires it to the node.
pub fn create_pod(node: &str, netns: &str, veth: &str, pod_ip: Ipv4Addr) -> Result<()> {
    if netns_exists(netns) {
        delete_netns(netns);
    }
    ip(&["netns", "add", netns])?;
    ip(&[
        "link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", veth, "netns", node,
    ])?;
    ip(&["-n", netns, "link", "set", "lo", "up"])?;
    ip(&["-n", netns, "link", "set", "eth0", "up"])?;
    ip(&["-n", netns, "addr", "add", &format!("{pod_ip}/32"), "dev", "eth0"])?;
    ip(&[
        "-n",
        netns,
        "route",
        "add",
        &format!("{GATEWAY}/32"),
        "dev",
        "eth0",
        "scope",
        "link",
    ])?;
    ip(&[
        "-n",
        netns,
        "route",
        "add",
        "default",
        "via",
        &GATEWAY.to_string(),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", node, "link", "set", veth, "up"])?;
    ip(&[
        "-n",
        node,
        "route",
        "replace",
        &format!("{pod_ip}/32"),
        "dev",
        veth,
    ])?;
    // The node answers ARP for the gateway (and anything it routes) on the pod's link.
    sysctl(node, &format!("net.ipv4.conf.{veth}.proxy_arp"), "1")?;
    Ok(())
}

/// Whether `pid` still runs (a zombie has finished; it only waits to be reaped).
pub fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Kills what still runs inside `netns` (waiting briefly for it to die) and deletes it; its veth
/// goes with it.
pub fn delete_netns(netns: &str) {
    let mut killed = Vec::new();
    if let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                killed.push(pid);
            }
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while killed.iter().any(|p| running(*p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = Command::new("ip").args(["netns", "del", netns]).output();
    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(netns));
}

/// `/etc/netns/<netns>/resolv.conf`: `ip netns exec` mounts it over /etc/resolv.conf, so the
/// pod resolves with Kubernetes' search path.
pub fn write_resolv_conf(netns: &str, namespace: &str) -> Result<()> {
    let dir = Path::new("/etc/netns").join(netns);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = format!(
        "# written by skiffctl local: cluster DNS, as the kubelet writes it\n\
         search {namespace}.svc.cluster.local svc.cluster.local cluster.local\n\
         nameserver {DNS_VIP}\n\
         options ndots:5\n"
    );
    std::fs::write(dir.join("resolv.conf"), text).context("writing resolv.conf")
}

/// Where ingress links take their /30s: 64 of them, one per mesh.
pub const INGRESS_RANGE: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 0);
/// The ingress link's end inside the node namespace.
pub const INGRESS_NODE_LINK: &str = "ingress0";

/// The /30s of [`INGRESS_RANGE`] some interface of this (host) namespace already uses.
fn ingress_subnets_in_use() -> Result<std::collections::BTreeSet<u8>> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .context("running `ip addr` (install iproute2)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut used = std::collections::BTreeSet::new();
    for word in text.split_whitespace() {
        let Some(addr) = word.split('/').next().and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
            continue;
        };
        let [a, b, c, d] = addr.octets();
        if [a, b, c] == [198, 18, 255] {
            used.insert(d / 4);
        }
    }
    Ok(used)
}

/// Links the host to the node: a veth pair `host_veth` (host) / `ingress0` (node) with a free /30
/// of 198.18.255.0/24, host .1 and node .2 of it. Allocation and creation hold a lock file in
/// `lock_dir`, so meshes started together never take the same /30. Only the connected route
/// appears on the host; the node reaches the host through it.
pub fn create_ingress_link(
    node: &str,
    host_veth: &str,
    lock_dir: &Path,
) -> Result<crate::state::IngressState> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(lock_dir)?;
    let lock = std::fs::File::create(lock_dir.join(".ingress.lock")).context("creating the ingress lock")?;
    // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "locking {}: {}",
            lock_dir.display(),
            std::io::Error::last_os_error()
        );
    }
    if Path::new("/sys/class/net").join(host_veth).exists() {
        // Left by a mesh of the same name that crashed: ours to remove.
        let _ = ip(&["link", "del", host_veth]);
    }
    let used = ingress_subnets_in_use()?;
    let Some(slot) = (0u8..64).find(|s| !used.contains(s)) else {
        bail!("no free /30 left in 198.18.255.0/24 for the ingress link (64 meshes run?)");
    };
    let base = u32::from(INGRESS_RANGE) + u32::from(slot) * 4;
    let host_address = Ipv4Addr::from(base + 1);
    let address = Ipv4Addr::from(base + 2);
    ip(&[
        "link",
        "add",
        host_veth,
        "type",
        "veth",
        "peer",
        "name",
        INGRESS_NODE_LINK,
        "netns",
        node,
    ])?;
    let created = (|| -> Result<()> {
        ip(&["addr", "add", &format!("{host_address}/30"), "dev", host_veth])?;
        ip(&["link", "set", host_veth, "up"])?;
        ip(&[
            "-n",
            node,
            "addr",
            "add",
            &format!("{address}/30"),
            "dev",
            INGRESS_NODE_LINK,
        ])?;
        ip(&["-n", node, "link", "set", INGRESS_NODE_LINK, "up"])?;
        Ok(())
    })();
    if let Err(e) = created {
        let _ = ip(&["link", "del", host_veth]);
        return Err(e);
    }
    Ok(crate::state::IngressState {
        host_veth: host_veth.to_owned(),
        host_address,
        address,
    })
}

/// Removes the host side of an ingress link (its peer goes with it); fine if it is gone.
pub fn delete_ingress_link(host_veth: &str) {
    if Path::new("/sys/class/net").join(host_veth).exists() {
        let _ = Command::new("ip").args(["link", "del", host_veth]).output();
    }
}

/// One Service port as kube-proxy programs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRule {
    /// `ns/name:port` for comments.
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: &'static str,
    /// Ready endpoints: pod IP and target port.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
    /// Load-balancer addresses (`status.loadBalancer.ingress`) that lead to the same endpoints.
    pub external_ips: Vec<Ipv4Addr>,
}

fn chain_id(s: &str) -> String {
    // kube-proxy names chains by a hash of the service port; the same idea, shorter.
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("{h:08X}")
}

/// The node's `nat` table as `iptables-restore` input: VIP:port → one ready endpoint, chosen
/// with kube-proxy's `statistic --mode random` ladder; hairpin traffic (a pod reaching itself
/// through its Service) is masqueraded as kube-proxy does. No endpoints: REJECT-like drop.
pub fn kube_proxy_rules(services: &[ServiceRule]) -> String {
    let mut chains = vec![
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    chains.push(":KUBE-SERVICES - [0:0]".into());
    chains.push(":KUBE-MARK-MASQ - [0:0]".into());
    chains.push(":KUBE-POSTROUTING - [0:0]".into());
    let mut rules = vec![
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".to_owned(),
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".to_owned(),
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING".to_owned(),
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000".to_owned(),
        "-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE".to_owned(),
    ];
    for s in services {
        if s.endpoints.is_empty() {
            continue;
        }
        let svc_chain = format!("KUBE-SVC-{}", chain_id(&format!("{}/{}", s.name, s.protocol)));
        chains.push(format!(":{svc_chain} - [0:0]"));
        rules.push(format!(
            "-A KUBE-SERVICES -d {}/32 -p {} -m comment --comment \"{} cluster IP\" -m {} --dport {} -j {svc_chain}",
            s.vip, s.protocol, s.name, s.protocol, s.port
        ));
        for ext in &s.external_ips {
            rules.push(format!(
                "-A KUBE-SERVICES -d {ext}/32 -p {} -m comment --comment \"{} loadbalancer IP\" -m {} --dport {} -j {svc_chain}",
                s.protocol, s.name, s.protocol, s.port
            ));
        }
        let n = s.endpoints.len();
        for (i, (ip, port)) in s.endpoints.iter().enumerate() {
            let sep = format!(
                "KUBE-SEP-{}",
                chain_id(&format!("{}/{}/{ip}:{port}", s.name, s.protocol))
            );
            chains.push(format!(":{sep} - [0:0]"));
            let remaining = n - i;
            if remaining > 1 {
                rules.push(format!(
                    "-A {svc_chain} -m comment --comment \"{}\" -m statistic --mode random --probability {:.11} -j {sep}",
                    s.name,
                    1.0 / remaining as f64
                ));
            } else {
                rules.push(format!(
                    "-A {svc_chain} -m comment --comment \"{}\" -j {sep}",
                    s.name
                ));
            }
            rules.push(format!("-A {sep} -s {ip}/32 -j KUBE-MARK-MASQ"));
            rules.push(format!(
                "-A {sep} -p {} -j DNAT --to-destination {ip}:{port}",
                s.protocol
            ));
        }
    }
    let mut out = String::from("*nat\n");
    for c in chains {
        out.push_str(&c);
        out.push('\n');
    }
    for r in rules {
        out.push_str(&r);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// Replaces the node's nat table in one `iptables-restore` (atomic for readers).
pub fn apply_kube_proxy(node: &str, rules: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", node, "iptables-restore", "-w"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running iptables-restore (install iptables)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(rules.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore in {node}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_ladder_spreads_evenly() {
        let rules = kube_proxy_rules(&[ServiceRule {
            name: "sidecar/nginx:80".into(),
            vip: Ipv4Addr::new(198, 19, 0, 20),
            port: 80,
            protocol: "tcp",
            endpoints: vec![(pod_ip(1), 80), (pod_ip(2), 80), (pod_ip(3), 80)],
            external_ips: vec![Ipv4Addr::new(198, 18, 255, 2)],
        }]);
        assert!(
            rules.contains("-A KUBE-SERVICES -d 198.18.255.2/32 -p tcp -m comment --comment \"sidecar/nginx:80 loadbalancer IP\" -m tcp --dport 80 -j KUBE-SVC-"),
            "{rules}"
        );
        assert!(rules.contains("--probability 0.33333333333"), "{rules}");
        assert!(rules.contains("--probability 0.50000000000"), "{rules}");
        assert_eq!(rules.matches("-j DNAT --to-destination").count(), 3);
        assert!(rules.contains("-d 198.19.0.20/32 -p tcp"));
        assert!(rules.ends_with("COMMIT\n"));
    }

    #[test]
    fn addresses_stay_in_the_benchmark_ranges() {
        assert_eq!(pod_ip(0), Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(pod_ip(300), Ipv4Addr::new(198, 18, 1, 54));
        assert_eq!(service_vip(0), Ipv4Addr::new(198, 19, 0, 20));
        assert!(in_vip_range(service_vip(1000)));
    }
}
