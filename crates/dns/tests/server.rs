//! The server on loopback, asked by hickory-resolver (a stub resolver Skiff did not write, fed the
//! same resolv.conf text a pod gets) and by raw messages for the wire details: flags, codes,
//! truncation and TCP.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use cluster_dns::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use cluster_dns::proto::rr::rdata::A;
use cluster_dns::proto::rr::{DNSClass, Name, RData, RecordType};
use cluster_dns::{
    serve, ClusterData, Endpoint, PortProtocol, Service, ServiceKind, ServicePort, Zone, ZoneConfig,
    ZoneHandle,
};
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const RESOLV_CONF: &str = "nameserver 127.0.0.1\n\
    search sidecar.svc.cluster.local svc.cluster.local cluster.local\n\
    options ndots:5\n";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
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

fn endpoint(addr: IpAddr) -> Endpoint {
    Endpoint {
        ip: addr,
        hostname: None,
        ready: true,
    }
}

/// nginx in `sidecar` (the seeds' service), and `many`: a headless service whose answer does
/// not fit in 512 bytes.
fn data() -> ClusterData {
    let many = (1..=100)
        .map(|i| endpoint(IpAddr::from([198, 18, 1, i])))
        .collect();
    ClusterData {
        services: vec![
            service(
                "nginx",
                "sidecar",
                ServiceKind::ClusterIp(vec![ip("198.19.0.20")]),
                vec![endpoint(ip("198.18.0.11"))],
            ),
            service("many", "sidecar", ServiceKind::Headless, many),
        ],
        ..ClusterData::default()
    }
}

/// Starts the server on 127.0.0.1 (UDP and TCP on the same port, as port 53 would be).
async fn start(data: &ClusterData) -> Result<(SocketAddr, ZoneHandle)> {
    let zone = ZoneHandle::new(Zone::new(&ZoneConfig::default(), data)?);
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = udp.local_addr()?;
        let Ok(tcp) = TcpListener::bind(addr).await else {
            continue; // that port is taken for TCP; try another
        };
        tokio::spawn(serve(udp, tcp, zone.clone()));
        return Ok((addr, zone));
    }
    anyhow::bail!("no free port for both UDP and TCP")
}

/// A stub resolver configured from a pod's resolv.conf, pointed at `addr`'s port.
fn resolver(addr: SocketAddr) -> Result<TokioResolver> {
    let (config, mut opts) = hickory_resolver::system_conf::parse_resolv_conf(RESOLV_CONF)?;
    let (domain, search, servers) = config.into_parts();
    let servers = servers
        .into_iter()
        .map(|mut s: NameServerConfig| {
            for c in &mut s.connections {
                c.port = addr.port();
            }
            s
        })
        .collect();
    // Ask with mixed-case names (DNS 0x20): the answer must echo the case.
    opts.case_randomization = true;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    opts.cache_size = 0;
    let config = ResolverConfig::from_parts(domain, search, servers);
    Ok(
        TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()?,
    )
}

async fn addresses(r: &TokioResolver, host: &str) -> Result<Vec<IpAddr>> {
    let mut v: Vec<IpAddr> = r.lookup_ip(host).await?.iter().collect();
    v.sort();
    Ok(v)
}

fn query(name: &str, qtype: RecordType, edns: bool) -> Result<Message> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name)?, qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    Ok(m)
}

async fn udp_exchange(addr: SocketAddr, bytes: &[u8]) -> Result<Message> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    sock.send_to(bytes, addr).await?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .context("no UDP answer")??;
    anyhow::ensure!(n <= 4096, "answer of {n} bytes");
    Ok(Message::from_vec(&buf[..n])?)
}

async fn udp(addr: SocketAddr, m: &Message) -> Result<(Message, usize)> {
    let bytes = m.to_vec()?;
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    sock.send_to(&bytes, addr).await?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .context("no UDP answer")??;
    Ok((Message::from_vec(&buf[..n])?, n))
}

async fn tcp(addr: SocketAddr, m: &Message) -> Result<Message> {
    let bytes = m.to_vec()?;
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(&(bytes.len() as u16).to_be_bytes()).await?;
    s.write_all(&bytes).await?;
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut len))
        .await
        .context("no TCP answer")??;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await?;
    Ok(Message::from_vec(&buf)?)
}

#[tokio::test]
async fn resolv_conf_search_path_resolves_like_a_pod() -> Result<()> {
    let (addr, _zone) = start(&data()).await?;
    let r = resolver(addr)?;
    let vip = vec![ip("198.19.0.20")];
    for host in [
        "nginx",
        "nginx.sidecar",
        "nginx.sidecar.svc",
        "nginx.sidecar.svc.cluster.local",
        "nginx.sidecar.svc.cluster.local.",
        "NGINX.Sidecar",
    ] {
        assert_eq!(addresses(&r, host).await?, vip, "{host}");
    }
    // A miss: NXDOMAIN down the search list, then REFUSED for the bare name (no upstream).
    let miss = r.lookup_ip("nope").await.expect_err("unknown service");
    assert!(miss.to_string().contains("Refused"), "{miss}");
    let miss = r
        .lookup_ip("nope.sidecar.svc.cluster.local.")
        .await
        .expect_err("unknown service");
    assert!(miss.is_nx_domain(), "{miss}");
    // Outside the cluster domain there is no upstream to ask: an error, not a hang.
    assert!(r.lookup_ip("example.com.").await.is_err());
    Ok(())
}

#[tokio::test]
async fn srv_and_ptr_through_the_resolver() -> Result<()> {
    let (addr, _zone) = start(&data()).await?;
    let r = resolver(addr)?;
    let srv = r
        .lookup("_http._tcp.nginx.sidecar.svc.cluster.local.", RecordType::SRV)
        .await?;
    let got: Vec<String> = srv.answers().iter().map(|r| r.data.to_string()).collect();
    assert_eq!(got, ["0 100 80 nginx.sidecar.svc.cluster.local."]);
    let ptr = r.reverse_lookup(ip("198.19.0.20")).await?;
    let got: Vec<String> = ptr.answers().iter().map(|r| r.data.to_string()).collect();
    assert_eq!(got, ["nginx.sidecar.svc.cluster.local."]);
    let ptr = r.reverse_lookup(ip("198.18.0.11")).await?;
    let got: Vec<String> = ptr.answers().iter().map(|r| r.data.to_string()).collect();
    assert_eq!(got, ["198-18-0-11.nginx.sidecar.svc.cluster.local."]);
    Ok(())
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_complete_over_tcp() -> Result<()> {
    let (addr, _zone) = start(&data()).await?;
    let q = query("many.sidecar.svc.cluster.local.", RecordType::A, false)?;
    let (m, size) = udp(addr, &q).await?;
    assert!(m.metadata.truncation, "{m:?}");
    assert!(size <= 512, "UDP answer of {size} bytes without EDNS");
    let m = tcp(addr, &q).await?;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 100);
    // With EDNS the client's buffer sets the limit.
    let (m, size) = udp(
        addr,
        &query("many.sidecar.svc.cluster.local.", RecordType::A, true)?,
    )
    .await?;
    assert!(size <= 1232, "{size}");
    assert!(m.metadata.truncation);
    assert!(m.edns.is_some(), "EDNS query, EDNS answer");
    // A resolver retries over TCP by itself and gets every address.
    let r = resolver(addr)?;
    assert_eq!(addresses(&r, "many").await?.len(), 100);
    Ok(())
}

#[tokio::test]
async fn response_codes_and_flags() -> Result<()> {
    let (addr, _zone) = start(&data()).await?;

    let q = query("nginx.sidecar.svc.cluster.local.", RecordType::A, false)?;
    let (m, _) = udp(addr, &q).await?;
    assert_eq!(m.metadata.id, q.metadata.id);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_desired, "RD is copied");
    assert!(!m.metadata.recursion_available, "no recursion here");
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].ttl, 5);
    assert_eq!(m.answers[0].data, RData::A(A::new(198, 19, 0, 20)));

    let (m, _) = udp(
        addr,
        &query("nope.sidecar.svc.cluster.local.", RecordType::A, false)?,
    )
    .await?;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    assert_eq!(m.authorities.len(), 1);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);

    let (m, _) = udp(
        addr,
        &query("nginx.sidecar.svc.cluster.local.", RecordType::TXT, false)?,
    )
    .await?;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);

    let (m, _) = udp(addr, &query("example.com.", RecordType::A, false)?).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.authoritative);

    let mut chaos = query("version.bind.", RecordType::TXT, false)?;
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(
        udp(addr, &chaos).await?.0.metadata.response_code,
        ResponseCode::Refused
    );

    let axfr = query("cluster.local.", RecordType::AXFR, false)?;
    assert_eq!(
        tcp(addr, &axfr).await?.metadata.response_code,
        ResponseCode::Refused
    );

    let mut two = query("nginx.sidecar.svc.cluster.local.", RecordType::A, false)?;
    two.add_query(Query::query(
        Name::from_ascii("many.sidecar.svc.cluster.local.")?,
        RecordType::A,
    ));
    assert_eq!(
        udp(addr, &two).await?.0.metadata.response_code,
        ResponseCode::FormErr
    );

    let mut notify = query("cluster.local.", RecordType::SOA, false)?;
    notify.metadata.op_code = OpCode::Notify;
    assert_eq!(
        udp(addr, &notify).await?.0.metadata.response_code,
        ResponseCode::NotImp
    );

    let mut v1 = query("nginx.sidecar.svc.cluster.local.", RecordType::A, true)?;
    if let Some(e) = v1.edns.as_mut() {
        e.set_version(1);
    }
    let (m, _) = udp(addr, &v1).await?;
    // BADVERS is extended rcode 16, which the decoder names BADSIG (the same number).
    assert_eq!(u16::from(m.metadata.response_code), 16, "{m:?}");

    // Garbage with a readable header gets FORMERR; shorter than a header, silence.
    let mut junk = q.to_vec()?;
    junk.truncate(14);
    let m = udp_exchange(addr, &junk).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    Ok(())
}

#[tokio::test]
async fn zone_updates_swap_atomically_and_bad_data_keeps_the_last_good() -> Result<()> {
    let (addr, zone) = start(&data()).await?;
    let r = resolver(addr)?;
    assert_eq!(addresses(&r, "nginx").await?, [ip("198.19.0.20")]);

    let mut next = data();
    next.services[0].kind = ServiceKind::ClusterIp(vec![ip("198.19.0.99")]);
    next.services.push(service(
        "httpbin",
        "sidecar",
        ServiceKind::ClusterIp(vec![ip("198.19.0.30")]),
        vec![],
    ));
    zone.update(&ZoneConfig::default(), &next)?;
    assert_eq!(addresses(&r, "nginx").await?, [ip("198.19.0.99")]);
    assert_eq!(addresses(&r, "httpbin.sidecar").await?, [ip("198.19.0.30")]);

    let mut bad = next.clone();
    bad.services[0].name = "Not_A_Label".into();
    let err = zone
        .update(&ZoneConfig::default(), &bad)
        .expect_err("invalid name");
    assert!(
        err.to_string()
            .contains("Service sidecar/Not_A_Label: metadata.name"),
        "{err}"
    );
    assert_eq!(
        addresses(&r, "nginx").await?,
        [ip("198.19.0.99")],
        "last good zone stays"
    );
    Ok(())
}
