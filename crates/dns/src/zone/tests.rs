//! Lookup answers against the Kubernetes DNS specification, without sockets.

use std::net::IpAddr;
use std::str::FromStr;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{Name, RData, RecordType};

use super::*;
use crate::model::{Endpoint, Pod, PortProtocol, Service, ServiceKind, ServicePort};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn name(s: &str) -> Name {
    Name::from_str(s).expect("test name")
}

fn port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol: PortProtocol::Tcp,
        port,
        target_port: None,
    }
}

fn ep(addr: &str, hostname: Option<&str>, ready: bool) -> Endpoint {
    Endpoint {
        ip: ip(addr),
        hostname: hostname.map(Into::into),
        ready,
    }
}

fn data() -> ClusterData {
    ClusterData {
        namespaces: vec!["empty".into()],
        services: vec![
            Service {
                name: "nginx".into(),
                namespace: "sidecar".into(),
                kind: ServiceKind::ClusterIp(vec![ip("198.19.0.20"), ip("2001:3::20")]),
                ports: vec![port("http", 80), port("", 8080)],
                endpoints: vec![ep("198.18.0.11", None, true), ep("198.18.0.12", None, false)],
                publish_not_ready_addresses: false,
            },
            Service {
                name: "db".into(),
                namespace: "sidecar".into(),
                kind: ServiceKind::Headless,
                ports: vec![ServicePort {
                    name: "pg".into(),
                    protocol: PortProtocol::Tcp,
                    port: 5432,
                    target_port: Some(15432),
                }],
                endpoints: vec![
                    ep("198.18.0.21", Some("db-0"), true),
                    ep("198.18.0.22", None, true),
                    ep("198.18.0.23", Some("db-2"), false),
                ],
                publish_not_ready_addresses: false,
            },
            Service {
                name: "empty-headless".into(),
                namespace: "sidecar".into(),
                kind: ServiceKind::Headless,
                ports: vec![],
                endpoints: vec![],
                publish_not_ready_addresses: false,
            },
            Service {
                name: "ext".into(),
                namespace: "default".into(),
                kind: ServiceKind::ExternalName("example.com".into()),
                ports: vec![],
                endpoints: vec![],
                publish_not_ready_addresses: false,
            },
            Service {
                name: "alias".into(),
                namespace: "default".into(),
                kind: ServiceKind::ExternalName("nginx.sidecar.svc.cluster.local".into()),
                ports: vec![],
                endpoints: vec![],
                publish_not_ready_addresses: false,
            },
        ],
        pods: vec![
            Pod {
                name: "nginx-7fc7f5758-46mzh".into(),
                namespace: "sidecar".into(),
                ips: vec![ip("198.18.0.11")],
            },
            Pod {
                name: "sleep-1".into(),
                namespace: "sidecar".into(),
                ips: vec![ip("198.18.0.30"), ip("2001:2::30")],
            },
        ],
    }
}

fn zone_with(pods: PodRecords) -> Zone {
    let config = ZoneConfig {
        pods,
        nameservers: vec![ip("198.19.0.10")],
        ..ZoneConfig::default()
    };
    Zone::new(&config, &data()).expect("valid data")
}

fn zone() -> Zone {
    zone_with(PodRecords::Insecure)
}

/// The answer's rdata, sorted, as text.
fn rdata(answer: &Answer) -> Vec<String> {
    let mut v: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

fn ask(zone: &Zone, q: &str, t: RecordType) -> Answer {
    zone.lookup(&name(q), t)
}

fn assert_nxdomain(a: &Answer, apex: &str) {
    assert_eq!(a.code, ResponseCode::NXDomain, "{a:?}");
    assert!(a.answers.is_empty());
    assert_eq!(a.authorities.len(), 1);
    assert_eq!(a.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(a.authorities[0].name, name(apex));
    assert_eq!(a.authorities[0].ttl, 5);
}

fn assert_nodata(a: &Answer) {
    assert_eq!(a.code, ResponseCode::NoError, "{a:?}");
    assert!(a.answers.is_empty(), "{a:?}");
    assert_eq!(a.authorities.len(), 1);
    assert_eq!(a.authorities[0].record_type(), RecordType::SOA);
}

#[test]
fn cluster_ip_service() {
    let z = zone();
    let a = ask(&z, "nginx.sidecar.svc.cluster.local.", RecordType::A);
    assert_eq!(a.code, ResponseCode::NoError);
    assert!(a.authoritative);
    assert_eq!(rdata(&a), ["198.19.0.20"]);
    assert_eq!(a.answers[0].ttl, 5);
    let a = ask(&z, "nginx.sidecar.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(rdata(&a), ["2001:3::20"]);
}

#[test]
fn names_match_case_insensitively_and_keep_the_query_case() {
    let z = zone();
    let a = ask(&z, "NGINX.Sidecar.SVC.cluster.LOCAL.", RecordType::A);
    assert_eq!(rdata(&a), ["198.19.0.20"]);
    assert!(a.answers[0]
        .name
        .eq_case(&name("NGINX.Sidecar.SVC.cluster.LOCAL.")));
}

#[test]
fn headless_service_answers_published_endpoints() {
    let z = zone();
    let a = ask(&z, "db.sidecar.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&a), ["198.18.0.21", "198.18.0.22"]);
    // Endpoint names: hostname, or the dashed IP.
    let a = ask(&z, "db-0.db.sidecar.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&a), ["198.18.0.21"]);
    let a = ask(&z, "198-18-0-22.db.sidecar.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&a), ["198.18.0.22"]);
    // Not ready and not published.
    assert_nxdomain(
        &ask(&z, "db-2.db.sidecar.svc.cluster.local.", RecordType::A),
        "cluster.local.",
    );
    // Without published endpoints a headless name does not exist (CoreDNS: NXDOMAIN).
    assert_nxdomain(
        &ask(&z, "empty-headless.sidecar.svc.cluster.local.", RecordType::A),
        "cluster.local.",
    );
}

#[test]
fn publish_not_ready_addresses() {
    let mut d = data();
    d.services[1].publish_not_ready_addresses = true;
    let z = Zone::new(&ZoneConfig::default(), &d).expect("valid");
    let a = ask(&z, "db.sidecar.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&a), ["198.18.0.21", "198.18.0.22", "198.18.0.23"]);
}

#[test]
fn multi_address_answers_rotate() {
    let z = zone();
    let first = |z: &Zone| {
        ask(z, "db.sidecar.svc.cluster.local.", RecordType::A).answers[0]
            .data
            .clone()
    };
    let a = first(&z);
    let b = first(&z);
    assert_ne!(a, b);
}

#[test]
fn endpoints_of_cluster_ip_services_have_names() {
    let z = zone();
    let a = ask(&z, "198-18-0-11.nginx.sidecar.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&a), ["198.18.0.11"]);
}

#[test]
fn srv_for_named_ports() {
    let z = zone();
    let a = ask(&z, "_http._tcp.nginx.sidecar.svc.cluster.local.", RecordType::SRV);
    assert_eq!(rdata(&a), ["0 100 80 nginx.sidecar.svc.cluster.local."]);
    // The target's addresses ride along.
    let mut extra: Vec<_> = a.additionals.iter().map(|r| r.data.to_string()).collect();
    extra.sort();
    assert_eq!(extra, ["198.19.0.20", "2001:3::20"]);
    // Headless: one SRV per endpoint, on the target port, weights split.
    let a = ask(&z, "_pg._tcp.db.sidecar.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        rdata(&a),
        [
            "0 50 15432 198-18-0-22.db.sidecar.svc.cluster.local.",
            "0 50 15432 db-0.db.sidecar.svc.cluster.local."
        ]
    );
    assert_eq!(a.additionals.len(), 2);
    // Wrong protocol or port name: no such name.
    assert_nxdomain(
        &ask(&z, "_http._udp.nginx.sidecar.svc.cluster.local.", RecordType::SRV),
        "cluster.local.",
    );
    // `_tcp.svc...` is an empty non-terminal.
    assert_nodata(&ask(&z, "_tcp.nginx.sidecar.svc.cluster.local.", RecordType::SRV));
    // SRV at the service name lists every port, named or not.
    let a = ask(&z, "nginx.sidecar.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        rdata(&a),
        [
            "0 50 80 nginx.sidecar.svc.cluster.local.",
            "0 50 8080 nginx.sidecar.svc.cluster.local."
        ]
    );
}

#[test]
fn pods_insecure_verified_disabled() {
    let z = zone();
    let a = ask(&z, "198-18-0-30.sidecar.pod.cluster.local.", RecordType::A);
    assert_eq!(rdata(&a), ["198.18.0.30"]);
    // Insecure: any address in an existing namespace, like kubeadm's CoreDNS.
    let a = ask(&z, "198-18-9-9.sidecar.pod.cluster.local.", RecordType::A);
    assert_eq!(rdata(&a), ["198.18.9.9"]);
    let a = ask(&z, "2001-2--30.sidecar.pod.cluster.local.", RecordType::AAAA);
    assert_eq!(rdata(&a), ["2001:2::30"]);
    assert_nodata(&ask(&z, "2001-2--30.sidecar.pod.cluster.local.", RecordType::A));
    assert_nxdomain(
        &ask(&z, "198-18-0-30.nope.pod.cluster.local.", RecordType::A),
        "cluster.local.",
    );
    assert_nxdomain(
        &ask(&z, "not-an-ip.sidecar.pod.cluster.local.", RecordType::A),
        "cluster.local.",
    );

    let z = zone_with(PodRecords::Verified);
    assert_eq!(
        rdata(&ask(&z, "198-18-0-30.sidecar.pod.cluster.local.", RecordType::A)),
        ["198.18.0.30"]
    );
    assert_nxdomain(
        &ask(&z, "198-18-9-9.sidecar.pod.cluster.local.", RecordType::A),
        "cluster.local.",
    );
    assert_nxdomain(
        &ask(&z, "198-18-0-30.default.pod.cluster.local.", RecordType::A),
        "cluster.local.",
    );

    let z = zone_with(PodRecords::Disabled);
    assert_nxdomain(
        &ask(&z, "198-18-0-30.sidecar.pod.cluster.local.", RecordType::A),
        "cluster.local.",
    );
}

#[test]
fn ptr_for_services_endpoints_and_pods() {
    let z = zone();
    let ptr = |q: &str| rdata(&ask(&z, q, RecordType::PTR));
    assert_eq!(
        ptr("20.0.19.198.in-addr.arpa."),
        ["nginx.sidecar.svc.cluster.local."]
    );
    let v6: Name = ip("2001:3::20").into();
    assert_eq!(
        rdata(&z.lookup(&v6, RecordType::PTR)),
        ["nginx.sidecar.svc.cluster.local."]
    );
    // A pod behind a service is named as its endpoint; a pod behind none by its pod name.
    assert_eq!(
        ptr("11.0.18.198.in-addr.arpa."),
        ["198-18-0-11.nginx.sidecar.svc.cluster.local."]
    );
    assert_eq!(
        ptr("21.0.18.198.in-addr.arpa."),
        ["db-0.db.sidecar.svc.cluster.local."]
    );
    assert_eq!(
        ptr("30.0.18.198.in-addr.arpa."),
        ["198-18-0-30.sidecar.pod.cluster.local."]
    );
    // Unknown addresses: NXDOMAIN under the reverse zone's SOA; ancestors exist.
    assert_nxdomain(
        &ask(&z, "99.0.18.198.in-addr.arpa.", RecordType::PTR),
        "in-addr.arpa.",
    );
    assert_nodata(&ask(&z, "0.18.198.in-addr.arpa.", RecordType::PTR));
}

#[test]
fn negative_answers() {
    let z = zone();
    assert_nxdomain(
        &ask(&z, "nope.sidecar.svc.cluster.local.", RecordType::A),
        "cluster.local.",
    );
    // Wrong type: NODATA with the SOA.
    assert_nodata(&ask(&z, "nginx.sidecar.svc.cluster.local.", RecordType::MX));
    // Empty non-terminals and existing namespaces are NODATA, unknown namespaces NXDOMAIN.
    for q in [
        "svc.cluster.local.",
        "sidecar.svc.cluster.local.",
        "empty.svc.cluster.local.",
        "pod.cluster.local.",
        "empty.pod.cluster.local.",
    ] {
        assert_nodata(&ask(&z, q, RecordType::A));
    }
    assert_nxdomain(
        &ask(&z, "nope.svc.cluster.local.", RecordType::A),
        "cluster.local.",
    );
    // The search path's misses.
    assert_nxdomain(
        &ask(
            &z,
            "nginx.sidecar.svc.cluster.local.cluster.local.",
            RecordType::A,
        ),
        "cluster.local.",
    );
}

#[test]
fn outside_the_zone_is_refused() {
    let z = zone();
    for q in [
        "example.com.",
        "local.",
        ".",
        "cluster.local.example.com.",
        "xcluster.local.",
    ] {
        let a = ask(&z, q, RecordType::A);
        assert_eq!(a.code, ResponseCode::Refused, "{q}");
        assert!(!a.authoritative && a.answers.is_empty() && a.authorities.is_empty());
    }
}

#[test]
fn apex_soa_ns_and_schema_version() {
    let z = zone();
    let a = ask(&z, "cluster.local.", RecordType::SOA);
    assert_eq!(a.answers.len(), 1);
    let RData::SOA(soa) = &a.answers[0].data else {
        panic!("not an SOA: {a:?}");
    };
    assert_eq!(&soa.mname, &name("ns.dns.cluster.local."));
    assert_eq!(soa.minimum, 5);
    let a = ask(&z, "cluster.local.", RecordType::NS);
    assert_eq!(rdata(&a), ["ns.dns.cluster.local."]);
    assert_eq!(a.additionals.len(), 1);
    assert_eq!(
        rdata(&ask(&z, "ns.dns.cluster.local.", RecordType::A)),
        ["198.19.0.10"]
    );
    assert_eq!(
        rdata(&ask(&z, "dns-version.cluster.local.", RecordType::TXT)),
        ["1.1.0"]
    );
}

#[test]
fn external_name_is_a_cname_followed_inside_the_cluster() {
    let z = zone();
    let a = ask(&z, "ext.default.svc.cluster.local.", RecordType::A);
    assert_eq!(a.code, ResponseCode::NoError);
    assert_eq!(rdata(&a), ["example.com."]);
    let a = ask(&z, "alias.default.svc.cluster.local.", RecordType::A);
    let got: Vec<_> = a.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(got, ["nginx.sidecar.svc.cluster.local.", "198.19.0.20"]);
    assert_eq!(a.answers[1].name, name("nginx.sidecar.svc.cluster.local."));
}

#[test]
fn other_domains() {
    let config = ZoneConfig {
        domain: "Mesh.Example".into(),
        ..ZoneConfig::default()
    };
    let z = Zone::new(&config, &data()).expect("valid");
    assert_eq!(z.origin().to_string(), "mesh.example.");
    assert_eq!(
        rdata(&ask(&z, "nginx.sidecar.svc.mesh.example.", RecordType::A)),
        ["198.19.0.20"]
    );
    assert_eq!(
        ask(&z, "nginx.sidecar.svc.cluster.local.", RecordType::A).code,
        ResponseCode::Refused
    );
}

#[test]
fn bad_data_names_every_problem() {
    let mut d = data();
    d.services[0].name = "Nginx".into();
    d.services[1].ports[0].name = "pg_sql".into();
    d.services[3].kind = ServiceKind::ExternalName(String::new());
    d.services.push(d.services[2].clone());
    d.pods[0].namespace = "-x".into();
    let err = Zone::new(&ZoneConfig::default(), &d).expect_err("invalid");
    let text = err.to_string();
    for needle in [
        "Service sidecar/Nginx: metadata.name: \"Nginx\"",
        "Service sidecar/db: spec.ports[0].name: \"pg_sql\"",
        "Service default/ext: spec.externalName: must not be empty",
        "Service sidecar/empty-headless: metadata.name: defined twice",
        "Pod -x/nginx-7fc7f5758-46mzh: metadata.namespace",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
    assert_eq!(err.problems.len(), 5, "{text}");

    let err = Zone::new(
        &ZoneConfig {
            domain: ".".into(),
            ..ZoneConfig::default()
        },
        &data(),
    )
    .expect_err("root");
    assert!(err.to_string().contains("ZoneConfig: domain"), "{err}");
}

#[test]
fn dashed_addresses() {
    assert_eq!(dashed_ip(ip("198.18.0.5")), "198-18-0-5");
    assert_eq!(dashed_ip(ip("2001:db8::5")), "2001-db8--5");
    assert_eq!(dashed_ip(ip("2001:db8::")), "2001-db8--0");
    for a in ["198.18.0.5", "2001:db8::5", "2001:db8::", "::1"] {
        assert_eq!(parse_dashed_ip(&dashed_ip(ip(a))), Some(ip(a)), "{a}");
    }
    assert_eq!(parse_dashed_ip("1-2-3"), None);
}
