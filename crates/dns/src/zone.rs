//! The cluster's names compiled into DNS records, and the lookup that answers a question from
//! them the way CoreDNS's `kubernetes` plugin does.
//!
//! A [`Zone`] is built once per change of [`ClusterData`] (everything precomputed, so a lookup
//! is a hash-map probe) and never mutated: the server swaps whole zones, so a query never sees a
//! half-applied update.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::model::{ClusterData, PodRecords, Service, ServiceKind, ZoneConfig};

/// The schema version CoreDNS publishes at `dns-version.DOMAIN` (Kubernetes DNS spec 1.1.0),
/// which some tools read to check they talk to a conforming cluster DNS.
const SCHEMA_VERSION: &str = "1.1.0";

/// One thing wrong in the [`ClusterData`] given to [`Zone::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The object, as `Service ns/name`, `Pod ns/name` or `ZoneConfig`.
    pub object: String,
    /// The offending field, Kubernetes-style (`spec.ports[1].name`).
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.reason)
    }
}

/// The cluster data cannot be published; every problem found is listed, so one error message
/// tells the operator everything to fix. The zone being served stays as it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid cluster DNS data: {}", display_problems(.problems))]
pub struct ZoneError {
    pub problems: Vec<Problem>,
}

fn display_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The records of one answer, ready to be put in a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub code: ResponseCode,
    /// Set when the name is ours (inside the cluster domain or a reverse zone); a refused
    /// name is not.
    pub authoritative: bool,
    pub answers: Vec<Record>,
    /// The zone's SOA on NXDOMAIN and NODATA, so resolvers cache the miss for the TTL.
    pub authorities: Vec<Record>,
    /// Addresses of SRV and NS targets, saving the client a round trip.
    pub additionals: Vec<Record>,
}

impl Answer {
    fn refused() -> Self {
        Answer {
            code: ResponseCode::Refused,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

/// An apex this server is authoritative for, with its SOA.
#[derive(Debug)]
struct Apex {
    name: LowerName,
    soa: Record,
}

/// The cluster's DNS zone (`DOMAIN` plus the reverse zones `in-addr.arpa` and `ip6.arpa`),
/// compiled from [`ClusterData`]. Immutable: build a new one to change it.
#[derive(Debug)]
pub struct Zone {
    ttl: u32,
    pods: PodRecords,
    /// The cluster domain first, then the reverse zones.
    apexes: Vec<Apex>,
    /// Every name that exists, with its records (empty for empty non-terminals, which answer
    /// NODATA rather than NXDOMAIN so search-path walks and QNAME minimisation behave).
    nodes: HashMap<LowerName, Vec<Record>>,
    /// Namespaces that exist, lowercase: pod names in other namespaces are NXDOMAIN.
    namespaces: HashSet<String>,
    /// Rotates multi-record A/AAAA answers between queries, as CoreDNS's `loadbalance` does, so
    /// clients that take the first address of a headless service spread over its endpoints.
    rotation: AtomicUsize,
}

impl Zone {
    /// Compiles `data` into records, or lists every problem in it.
    pub fn new(config: &ZoneConfig, data: &ClusterData) -> Result<Zone, ZoneError> {
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let mut b = Builder::new(config, serial)?;
        for name in &data.namespaces {
            if b.check_label(&format!("Namespace {name}"), "metadata.name", name) {
                b.namespaces.insert(name.clone());
            }
        }
        let mut seen = HashSet::new();
        for svc in &data.services {
            if !seen.insert((&svc.namespace, &svc.name)) {
                b.problem(
                    format!("Service {}/{}", svc.namespace, svc.name),
                    "metadata.name",
                    "defined twice",
                );
                continue;
            }
            b.service(svc);
        }
        for pod in &data.pods {
            b.pod(pod);
        }
        b.finish()
    }

    /// The cluster domain, e.g. `cluster.local.`.
    pub fn origin(&self) -> &LowerName {
        &self.apexes[0].name
    }

    /// Answers one question. `qname`'s case is kept in the answer's owner names (resolvers
    /// using DNS 0x20 check it); matching ignores case.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Answer {
        let lname = LowerName::new(qname);
        let Some(apex) = self.apexes.iter().find(|a| a.name.zone_of(&lname)) else {
            return Answer::refused();
        };
        let mut answer = Answer {
            code: ResponseCode::NoError,
            authoritative: true,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        };
        let Some(records) = self.node(&lname) else {
            answer.code = ResponseCode::NXDomain;
            answer.authorities.push(apex.soa.clone());
            return answer;
        };
        self.answer_node(qname, qtype, &records, &mut answer, 0);
        if answer.answers.is_empty() {
            answer.authorities.push(apex.soa.clone());
        }
        answer
    }

    fn node(&self, name: &LowerName) -> Option<Cow<'_, [Record]>> {
        if let Some(records) = self.nodes.get(name) {
            return Some(Cow::Borrowed(records));
        }
        self.synthesize_pod(name).map(Cow::Owned)
    }

    fn answer_node(
        &self,
        qname: &Name,
        qtype: RecordType,
        records: &[Record],
        answer: &mut Answer,
        depth: u8,
    ) {
        let with_owner = |r: &Record| {
            let mut r = r.clone();
            r.name = qname.clone();
            r
        };
        if qtype != RecordType::CNAME && qtype != RecordType::ANY {
            if let Some(cname) = records.iter().find(|r| r.record_type() == RecordType::CNAME) {
                answer.answers.push(with_owner(cname));
                // Follow an ExternalName that points back into the cluster, as an authoritative
                // server does for in-zone CNAME targets; a name outside stays for the client.
                if let (RData::CNAME(CNAME(target)), true) = (&cname.data, depth < 8) {
                    let ltarget = LowerName::new(target);
                    if self.apexes.iter().any(|a| a.name.zone_of(&ltarget)) {
                        if let Some(next) = self.node(&ltarget) {
                            self.answer_node(target, qtype, &next, answer, depth + 1);
                        }
                    }
                }
                return;
            }
        }
        let start = answer.answers.len();
        answer.answers.extend(
            records
                .iter()
                .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                .map(with_owner),
        );
        let found = answer.answers.len() - start;
        if found > 1 && matches!(qtype, RecordType::A | RecordType::AAAA) {
            let by = self.rotation.fetch_add(1, Ordering::Relaxed) % found;
            answer.answers[start..].rotate_left(by);
        }
        for i in start..answer.answers.len() {
            let target = match &answer.answers[i].data {
                RData::SRV(srv) => srv.target.clone(),
                RData::NS(NS(target)) => target.clone(),
                _ => continue,
            };
            if let Some(glue) = self.nodes.get(&LowerName::new(&target)) {
                for r in glue {
                    if matches!(r.record_type(), RecordType::A | RecordType::AAAA)
                        && !answer.additionals.contains(r)
                    {
                        answer.additionals.push(r.clone());
                    }
                }
            }
        }
    }

    /// `a-b-c-d.NS.pod.DOMAIN` in `pods insecure` mode: any well-formed dashed address in a
    /// namespace that exists, parsed as CoreDNS does.
    fn synthesize_pod(&self, name: &LowerName) -> Option<Vec<Record>> {
        if self.pods != PodRecords::Insecure {
            return None;
        }
        let origin = self.origin();
        if name.num_labels() != origin.num_labels() + 3 || !origin.zone_of(name) {
            return None;
        }
        let name: Name = name.into();
        let labels: Vec<&[u8]> = name.iter().collect();
        let (host, namespace, kind) = (labels.first()?, labels.get(1)?, labels.get(2)?);
        if *kind != b"pod" {
            return None;
        }
        let namespace = std::str::from_utf8(namespace).ok()?;
        if !self.namespaces.contains(namespace) {
            return None;
        }
        let ip = parse_dashed_ip(std::str::from_utf8(host).ok()?)?;
        Some(vec![Record::from_rdata(name.clone(), self.ttl, ip_rdata(ip))])
    }
}

/// A dashed pod or endpoint name back to its address, as CoreDNS reads it: three dashes and
/// no `--` is IPv4, anything else is tried as IPv6.
fn parse_dashed_ip(host: &str) -> Option<IpAddr> {
    let text = if host.matches('-').count() == 3 && !host.contains("--") {
        host.replace('-', ".")
    } else {
        host.replace('-', ":")
    };
    text.parse().ok()
}

/// An address as a DNS label, as Kubernetes names endpoints and pods without a hostname:
/// `198-18-0-5`, `2001-db8--5`, and `2001-db8--0` for an address ending in `::`.
pub fn dashed_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => {
            let dashed = v6.to_string().replace(':', "-");
            if dashed.ends_with('-') {
                dashed + "0"
            } else {
                dashed
            }
        }
    }
}

fn ip_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// Whether `s` is a lowercase RFC 1123 label, the rule Kubernetes applies to the names that
/// end up in DNS.
fn label_error(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("must not be empty");
    }
    if s.len() > 63 {
        return Some("longer than 63 characters, the limit of a DNS label");
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Some("only lowercase letters, digits and '-' make a DNS label");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some("a DNS label must start and end with a letter or digit");
    }
    None
}

#[cfg(test)]
mod tests;

// === impl Builder ===

struct Builder<'a> {
    config: &'a ZoneConfig,
    origin: Name,
    nodes: HashMap<LowerName, Vec<Record>>,
    /// SRV targets per owner, turned into records at the end, when the weight (CoreDNS's
    /// `100 / count` per RRset) is known.
    srv: HashMap<LowerName, (Name, Vec<(u16, Name)>)>,
    namespaces: HashSet<String>,
    problems: Vec<Problem>,
    apexes: Vec<Apex>,
}

impl<'a> Builder<'a> {
    fn new(config: &'a ZoneConfig, serial: u32) -> Result<Self, ZoneError> {
        let bad = |reason: String| ZoneError {
            problems: vec![Problem {
                object: "ZoneConfig".into(),
                field: "domain".into(),
                reason,
            }],
        };
        let mut origin = Name::from_ascii(&config.domain)
            .map_err(|e| bad(format!("{:?} is not a domain name: {e}", config.domain)))?
            .to_lowercase();
        origin.set_fqdn(true);
        if origin.is_root() {
            return Err(bad("the cluster domain cannot be the root".into()));
        }
        let ttl = config.ttl;
        let fqdn = |s: &str| Name::from_ascii(s).map(|n| n.append_domain(&origin));
        let mut b = Builder {
            config,
            origin: origin.clone(),
            nodes: HashMap::new(),
            srv: HashMap::new(),
            namespaces: HashSet::new(),
            problems: Vec::new(),
            apexes: Vec::new(),
        };
        let (Ok(Ok(ns_host)), Ok(Ok(hostmaster)), Ok(Ok(version))) =
            (fqdn("ns.dns"), fqdn("hostmaster"), fqdn("dns-version"))
        else {
            return Err(bad(format!("{origin} is too long for the zone's names")));
        };
        let reverse = ["in-addr.arpa.", "ip6.arpa."].map(Name::from_ascii);
        for apex in std::iter::once(Ok(origin.clone())).chain(reverse) {
            let apex = apex.map_err(|e| bad(format!("reverse zone name: {e}")))?;
            // CoreDNS's values: refresh 2 h, retry 30 min, expire 1 day, negative TTL = TTL.
            let soa = SOA::new(
                ns_host.clone(),
                hostmaster.clone(),
                serial,
                7200,
                1800,
                86400,
                ttl,
            );
            let soa = Record::from_rdata(apex.clone(), ttl, RData::SOA(soa));
            b.add_record(soa.clone());
            b.add(&apex, RData::NS(NS(ns_host.clone())));
            b.apexes.push(Apex {
                name: LowerName::new(&apex),
                soa,
            });
        }
        for ip in &config.nameservers {
            b.add(&ns_host, ip_rdata(*ip));
        }
        b.add(&version, RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()])));
        for part in ["svc", "pod"] {
            if let Ok(Ok(name)) = fqdn(part) {
                b.nodes.entry(LowerName::new(&name)).or_default();
            }
        }
        Ok(b)
    }

    fn problem(&mut self, object: String, field: &str, reason: impl Into<String>) {
        self.problems.push(Problem {
            object,
            field: field.to_owned(),
            reason: reason.into(),
        });
    }

    fn check_label(&mut self, object: &str, field: &str, value: &str) -> bool {
        match label_error(value) {
            None => true,
            Some(reason) => {
                self.problem(object.to_owned(), field, format!("{value:?}: {reason}"));
                false
            }
        }
    }

    /// `labels` (most specific first) under the cluster domain.
    fn name(&self, labels: &[&str]) -> Option<Name> {
        Name::from_labels(labels.iter().map(|l| l.as_bytes()))
            .and_then(|n| n.append_domain(&self.origin))
            .ok()
    }

    fn add(&mut self, owner: &Name, rdata: RData) {
        self.add_record(Record::from_rdata(owner.clone(), self.config.ttl, rdata));
    }

    fn add_record(&mut self, record: Record) {
        let records = self.nodes.entry(LowerName::new(&record.name)).or_default();
        if !records.contains(&record) {
            records.push(record);
        }
    }

    fn add_srv(&mut self, owner: &Name, port: u16, target: &Name) {
        let (_, targets) = self
            .srv
            .entry(LowerName::new(owner))
            .or_insert_with(|| (owner.clone(), Vec::new()));
        if !targets.contains(&(port, target.clone())) {
            targets.push((port, target.clone()));
        }
    }

    fn service(&mut self, svc: &Service) {
        let object = format!("Service {}/{}", svc.namespace, svc.name);
        let mut ok = self.check_label(&object, "metadata.namespace", &svc.namespace);
        ok &= self.check_label(&object, "metadata.name", &svc.name);
        for (i, port) in svc.ports.iter().enumerate() {
            if !port.name.is_empty() {
                ok &= self.check_label(&object, &format!("spec.ports[{i}].name"), &port.name);
            }
        }
        for (i, ep) in svc.endpoints.iter().enumerate() {
            if let Some(host) = &ep.hostname {
                ok &= self.check_label(&object, &format!("endpoints[{i}].hostname"), host);
            }
        }
        let external = match &svc.kind {
            ServiceKind::ExternalName(target) => match Name::from_ascii(target) {
                Ok(mut n) if !target.is_empty() => {
                    n.set_fqdn(true);
                    Some(n)
                }
                Ok(_) => {
                    self.problem(object.clone(), "spec.externalName", "must not be empty");
                    return;
                }
                Err(e) => {
                    self.problem(
                        object.clone(),
                        "spec.externalName",
                        format!("{target:?} is not a DNS name: {e}"),
                    );
                    return;
                }
            },
            _ => None,
        };
        let Some(svc_name) = self.name(&[&svc.name, &svc.namespace, "svc"]).filter(|_| ok) else {
            if ok {
                self.problem(object, "metadata.name", "the service's DNS name is too long");
            }
            return;
        };
        self.namespaces.insert(svc.namespace.clone());
        if let Some(target) = external {
            self.add(&svc_name, RData::CNAME(CNAME(target)));
            return;
        }

        let published: Vec<_> = svc
            .endpoints
            .iter()
            .filter(|ep| ep.ready || svc.publish_not_ready_addresses)
            .collect();
        let mut endpoint_names = Vec::new();
        for ep in &published {
            let host = ep.hostname.clone().unwrap_or_else(|| dashed_ip(ep.ip));
            let Some(ep_name) = self.name(&[&host, &svc.name, &svc.namespace, "svc"]) else {
                self.problem(object.clone(), "endpoints", format!("{host}: DNS name too long"));
                continue;
            };
            self.add(&ep_name, ip_rdata(ep.ip));
            self.add(&Name::from(ep.ip), RData::PTR(PTR(ep_name.clone())));
            endpoint_names.push(ep_name);
        }

        let headless = match &svc.kind {
            ServiceKind::ClusterIp(ips) => {
                for ip in ips {
                    self.add(&svc_name, ip_rdata(*ip));
                    self.add(&Name::from(*ip), RData::PTR(PTR(svc_name.clone())));
                }
                false
            }
            _ => {
                for ep in &published {
                    self.add(&svc_name, ip_rdata(ep.ip));
                }
                true
            }
        };
        for port in &svc.ports {
            let named = (!port.name.is_empty())
                .then(|| {
                    let name = format!("_{}", port.name);
                    let proto = format!("_{}", port.protocol.label());
                    self.name(&[&name, &proto, &svc.name, &svc.namespace, "svc"])
                })
                .flatten();
            let mut targets: Vec<(u16, Name)> = Vec::new();
            if headless {
                let target_port = port.target_port.unwrap_or(port.port);
                targets.extend(endpoint_names.iter().map(|n| (target_port, n.clone())));
            } else {
                targets.push((port.port, svc_name.clone()));
            }
            for (p, target) in &targets {
                self.add_srv(&svc_name, *p, target);
                if let Some(named) = &named {
                    self.add_srv(named, *p, target);
                }
            }
        }
    }

    fn pod(&mut self, pod: &crate::model::Pod) {
        let object = format!("Pod {}/{}", pod.namespace, pod.name);
        if !self.check_label(&object, "metadata.namespace", &pod.namespace) {
            return;
        }
        self.namespaces.insert(pod.namespace.clone());
        if self.config.pods == PodRecords::Disabled {
            return;
        }
        for ip in &pod.ips {
            let Some(name) = self.name(&[&dashed_ip(*ip), &pod.namespace, "pod"]) else {
                continue;
            };
            if self.config.pods == PodRecords::Verified {
                self.add(&name, ip_rdata(*ip));
            }
            // A pod behind a service is named after its endpoint (set above); others by pod name.
            let reverse = Name::from(*ip);
            if !self.nodes.contains_key(&LowerName::new(&reverse)) {
                self.add(&reverse, RData::PTR(PTR(name)));
            }
        }
    }

    fn finish(mut self) -> Result<Zone, ZoneError> {
        if !self.problems.is_empty() {
            return Err(ZoneError {
                problems: self.problems,
            });
        }
        for (_, (owner, targets)) in std::mem::take(&mut self.srv) {
            let weight = (100 / targets.len().max(1)).max(1) as u16;
            for (port, target) in targets {
                self.add(&owner, RData::SRV(SRV::new(0, weight, port, target)));
            }
        }
        for ns in &self.namespaces {
            for part in ["svc", "pod"] {
                if let Some(name) = self.name(&[ns, part]) {
                    self.nodes.entry(LowerName::new(&name)).or_default();
                }
            }
        }
        // Empty non-terminals: every ancestor of a name, up to its apex, exists.
        let names: Vec<LowerName> = self.nodes.keys().cloned().collect();
        for name in names {
            let Some(apex) = self.apexes.iter().find(|a| a.name.zone_of(&name)) else {
                continue;
            };
            let mut parent = name.base_name();
            while apex.name.zone_of(&parent) && parent != apex.name {
                self.nodes.entry(parent.clone()).or_default();
                parent = parent.base_name();
            }
        }
        Ok(Zone {
            ttl: self.config.ttl,
            pods: self.config.pods,
            apexes: self.apexes,
            nodes: self.nodes,
            namespaces: self.namespaces,
            rotation: AtomicUsize::new(0),
        })
    }
}
