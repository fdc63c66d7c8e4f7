//! The server in a DNS "pod" (network namespace) and a client pod whose resolv.conf is what the
//! local mesh writes: `ip netns exec` bind-mounts `/etc/netns/POD/resolv.conf`, so glibc's
//! resolver (`getent`) and Python's `socket` walk the Kubernetes search path against it.
//! Needs root (namespaces); only test-namespace addresses are used.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result};
use cluster_dns::{
    serve, ClusterData, Endpoint, PortProtocol, Service, ServiceKind, ServicePort, Zone, ZoneConfig,
    ZoneHandle,
};
use testkit::{Network, Pod};

/// `/etc/netns/NAME/resolv.conf`, removed on drop.
struct ResolvConf(PathBuf);

impl ResolvConf {
    fn write(pod: &Pod, text: &str) -> Result<Self> {
        let dir = PathBuf::from("/etc/netns").join(&pod.netns);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("resolv.conf"), text)?;
        Ok(Self(dir))
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        // Only this pod's directory: /etc/netns itself may be in use by a concurrent test.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `program args` in `pod` through `ip netns exec`, which applies the resolv.conf.
fn netns_exec(pod: &Pod, program: &str, args: &[&str]) -> Result<Output> {
    Command::new("ip")
        .args(["netns", "exec", &pod.netns, program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("ip netns exec {} {program}", pod.netns))
}

fn service(name: &str, ns: &str, kind: ServiceKind, endpoints: Vec<Endpoint>) -> Service {
    Service {
        name: name.into(),
        namespace: ns.into(),
        kind,
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: PortProtocol::Tcp,
            port: 80,
            target_port: None,
        }],
        endpoints,
        publish_not_ready_addresses: false,
    }
}

fn data() -> ClusterData {
    let ep = |ip: [u8; 4]| Endpoint {
        ip: ip.into(),
        hostname: None,
        ready: true,
    };
    ClusterData {
        services: vec![
            service(
                "nginx",
                "sidecar",
                ServiceKind::ClusterIp(vec![[198, 19, 0, 20].into()]),
                vec![ep([198, 18, 0, 50])],
            ),
            service(
                "httpbin",
                "other",
                ServiceKind::ClusterIp(vec![[198, 19, 0, 30].into()]),
                vec![],
            ),
            service(
                "many",
                "sidecar",
                ServiceKind::Headless,
                (1..=60).map(|i| ep([198, 18, 1, i])).collect(),
            ),
        ],
        ..ClusterData::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glibc_and_python_resolve_through_the_pod_search_path() -> Result<()> {
    let net = Network::new("dnsglibc")?;
    let dns = net.add_pod("dns")?;
    let client = net.add_pod("client")?;

    // Bind inside the DNS pod, serve from this runtime: what the local mesh does.
    let (udp, tcp) = dns.run(|| -> std::io::Result<_> {
        let udp = std::net::UdpSocket::bind("0.0.0.0:53")?;
        let tcp = std::net::TcpListener::bind("0.0.0.0:53")?;
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })?;
    let zone = ZoneHandle::new(Zone::new(&ZoneConfig::default(), &data())?);
    let server = tokio::spawn(serve(
        tokio::net::UdpSocket::from_std(udp)?,
        tokio::net::TcpListener::from_std(tcp)?,
        zone,
    ));

    let _conf = ResolvConf::write(
        &client,
        &format!(
            "nameserver {}\nsearch sidecar.svc.cluster.local svc.cluster.local cluster.local\n\
             options ndots:5 timeout:2 attempts:1\n",
            dns.ip
        ),
    )?;

    let checks = tokio::task::spawn_blocking(move || -> Result<()> {
        let getent = |args: &[&str]| netns_exec(&client, "getent", args);
        for (host, want) in [
            ("nginx", "198.19.0.20     nginx.sidecar.svc.cluster.local"),
            ("nginx.sidecar", "198.19.0.20     nginx.sidecar.svc.cluster.local"),
            ("nginx.sidecar.svc.cluster.local", "198.19.0.20     nginx.sidecar.svc.cluster.local"),
            ("httpbin.other", "198.19.0.30     httpbin.other.svc.cluster.local"),
            // Reverse: glibc asks PTR.
            ("198.19.0.20", "198.19.0.20     nginx.sidecar.svc.cluster.local"),
        ] {
            let out = getent(&["hosts", host])?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "getent hosts {host}: {out:?}");
            assert_eq!(stdout.trim(), want, "getent hosts {host}");
        }
        // `httpbin` alone is not in this pod's namespace: the search path does not find it.
        for miss in ["nope", "httpbin"] {
            let out = getent(&["hosts", miss])?;
            assert_eq!(out.status.code(), Some(2), "getent hosts {miss} must miss: {out:?}");
        }
        // 60 addresses do not fit in 512 bytes: glibc gets TC and retries over TCP.
        let out = getent(&["ahostsv4", "many"])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut ips: Vec<&str> = stdout.lines().filter_map(|l| l.split_whitespace().next()).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 60, "getent ahostsv4 many: {stdout}");

        let script = "import json, socket, sys\n\
            out = {}\n\
            for host in sys.argv[1:]:\n\
            \x20   try:\n\
            \x20       out[host] = sorted({ai[4][0] for ai in socket.getaddrinfo(host, 80, proto=socket.IPPROTO_TCP)})\n\
            \x20   except socket.gaierror as e:\n\
            \x20       out[host] = 'error'\n\
            print(json.dumps(out, sort_keys=True))\n";
        let out = netns_exec(
            &client,
            "python3",
            &["-c", script, "nginx", "nginx.sidecar", "nginx.sidecar.svc.cluster.local", "nope"],
        )?;
        assert!(out.status.success(), "python: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            r#"{"nginx": ["198.19.0.20"], "nginx.sidecar": ["198.19.0.20"], "nginx.sidecar.svc.cluster.local": ["198.19.0.20"], "nope": "error"}"#
        );
        Ok(())
    })
    .await?;
    server.abort();
    checks
}
