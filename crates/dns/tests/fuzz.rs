//! Property tests: random and mutated packets never panic the server (a panic hook watches the
//! server's thread, since a panicking request task would otherwise die silently), every reply
//! it sends decodes, and it keeps answering; random names never panic a lookup.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use cluster_dns::proto::op::{Edns, Message, Query, ResponseCode};
use cluster_dns::proto::rr::{Name, RecordType};
use cluster_dns::{
    serve, ClusterData, Endpoint, Pod, PortProtocol, Service, ServiceKind, ServicePort, Zone, ZoneConfig,
    ZoneHandle,
};
use proptest::prelude::*;

const SERVER_THREAD: &str = "dns-server";
static SERVER_PANICKED: AtomicBool = AtomicBool::new(false);

fn data() -> ClusterData {
    ClusterData {
        services: vec![
            Service {
                name: "nginx".into(),
                namespace: "sidecar".into(),
                kind: ServiceKind::ClusterIp(vec![[198, 19, 0, 20].into()]),
                ports: vec![ServicePort {
                    name: "http".into(),
                    protocol: PortProtocol::Tcp,
                    port: 80,
                    target_port: None,
                }],
                endpoints: vec![Endpoint {
                    ip: [198, 18, 0, 11].into(),
                    hostname: None,
                    ready: true,
                }],
                publish_not_ready_addresses: false,
            },
            Service {
                name: "alias".into(),
                namespace: "sidecar".into(),
                kind: ServiceKind::ExternalName("nginx.sidecar.svc.cluster.local".into()),
                ports: vec![],
                endpoints: vec![],
                publish_not_ready_addresses: false,
            },
        ],
        pods: vec![Pod {
            name: "sleep".into(),
            namespace: "sidecar".into(),
            ips: vec![[198, 18, 0, 30].into()],
        }],
        ..ClusterData::default()
    }
}

/// One server for the whole test binary, on its own named thread so the panic hook can tell
/// its panics from the test's.
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(SERVER_THREAD) {
                SERVER_PANICKED.store(true, Ordering::SeqCst);
            }
            default(info);
        }));
    });
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(SERVER_THREAD.into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("udp");
                    let addr = udp.local_addr().expect("addr");
                    let tcp = tokio::net::TcpListener::bind(addr)
                        .await
                        .expect("tcp on the same port");
                    let zone = Zone::new(&ZoneConfig::default(), &data()).expect("zone");
                    tx.send(addr).expect("send addr");
                    let _ = serve(udp, tcp, ZoneHandle::new(zone)).await;
                });
            })
            .expect("server thread");
        rx.recv().expect("server address")
    })
}

fn encode(name: &str, qtype: RecordType, edns: bool, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    if let Ok(name) = Name::from_ascii(name) {
        m.add_query(Query::query(name, qtype));
    }
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap_or_default()
}

/// Valid queries the mutations start from.
fn seeds() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for (i, (name, t)) in [
        ("nginx.sidecar.svc.cluster.local.", RecordType::A),
        ("_http._tcp.nginx.sidecar.svc.cluster.local.", RecordType::SRV),
        ("alias.sidecar.svc.cluster.local.", RecordType::AAAA),
        ("198-18-0-30.sidecar.pod.cluster.local.", RecordType::A),
        ("20.0.19.198.in-addr.arpa.", RecordType::PTR),
        ("cluster.local.", RecordType::ANY),
        ("example.com.", RecordType::MX),
    ]
    .into_iter()
    .enumerate()
    {
        v.push(encode(name, t, i % 2 == 0, i as u16));
    }
    v
}

/// Sends `packet`, then a probe query from the same socket, and reads until the probe is
/// answered: the server is alive, and every datagram it sent on the way must decode.
fn exchange(packet: &[u8]) -> Result<(), TestCaseError> {
    const PROBE_ID: u16 = 0xbeef;
    let addr = server();
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| TestCaseError::fail(e.to_string()))?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let _ = sock.send_to(packet, addr);
    let probe = encode("nginx.sidecar.svc.cluster.local.", RecordType::A, false, PROBE_ID);
    sock.send_to(&probe, addr)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 65535];
    loop {
        prop_assert!(Instant::now() < deadline, "server stopped answering");
        let Ok(n) = sock.recv(&mut buf) else {
            // A probe can in principle be lost; ask again.
            let _ = sock.send_to(&probe, addr);
            continue;
        };
        let reply = Message::from_vec(&buf[..n]);
        prop_assert!(reply.is_ok(), "undecodable reply {:?} to {:?}", &buf[..n], packet);
        if let Ok(m) = reply {
            let is_probe = m.queries.first().is_some_and(|q| {
                q.query_type() == RecordType::A && q.name().to_ascii() == "nginx.sidecar.svc.cluster.local."
            });
            if m.metadata.id == PROBE_ID && is_probe {
                prop_assert_eq!(m.metadata.response_code, ResponseCode::NoError);
                prop_assert_eq!(m.answers.len(), 1);
                break;
            }
        }
    }
    prop_assert!(!SERVER_PANICKED.load(Ordering::SeqCst), "the server panicked");
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Truncate(usize),
    Append(Vec<u8>),
    Swap(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 1..40).prop_map(Mutation::Append),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
    ]
}

fn mutate(mut packet: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = packet.len().max(1);
        match m {
            Mutation::Set(i, b) => {
                if let Some(x) = packet.get_mut(i % len) {
                    *x = *b;
                }
            }
            Mutation::Truncate(n) => packet.truncate(n % len),
            Mutation::Append(bytes) => packet.extend_from_slice(bytes),
            Mutation::Swap(a, b) => {
                if !packet.is_empty() {
                    packet.swap(a % len, b % len);
                }
            }
        }
    }
    packet
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_packets(packet in proptest::collection::vec(any::<u8>(), 0..600)) {
        exchange(&packet)?;
    }

    #[test]
    fn mutated_queries(seed in 0usize..7, mutations in proptest::collection::vec(mutation(), 1..8)) {
        let seeds = seeds();
        let packet = mutate(seeds[seed % seeds.len()].clone(), &mutations);
        exchange(&packet)?;
    }

    #[test]
    fn random_names_never_panic_a_lookup(
        labels in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..12), 0..6),
        in_zone in any::<bool>(),
        qtype in any::<u16>(),
    ) {
        static ZONE: OnceLock<Zone> = OnceLock::new();
        let zone = ZONE.get_or_init(|| Zone::new(&ZoneConfig::default(), &data()).expect("zone"));
        let Ok(mut name) = Name::from_labels(labels) else { return Ok(()) };
        if in_zone {
            let Ok(n) = name.append_domain(&Name::from_ascii("sidecar.svc.cluster.local.").expect("name")) else {
                return Ok(());
            };
            name = n;
        }
        let answer = zone.lookup(&name, RecordType::from(qtype));
        prop_assert!(matches!(
            answer.code,
            ResponseCode::NoError | ResponseCode::NXDomain | ResponseCode::Refused
        ));
    }
}

/// Random bytes over TCP, framed and unframed: the connection may be dropped, the server stays.
#[test]
fn random_tcp_streams() {
    use std::io::{Read, Write};
    let addr = server();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..50 {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            panic!("connect failed in round {round}");
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let len = (next() % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 {
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.append(&mut bytes);
            bytes = framed;
        }
        let _ = s.write_all(&bytes);
        let mut sink = [0u8; 1024];
        let _ = s.read(&mut sink);
    }
    exchange(&[]).expect("server alive after TCP garbage");
}
