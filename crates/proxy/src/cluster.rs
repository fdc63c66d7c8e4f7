//! Clusters at run time: their hosts (with Envoy's per-host counters), load balancing, and the
//! circuit-breaker accounting shared by every worker. Host selection is pure given the host set
//! and a random source, so its distributions are tested statistically.
//!
//! Consistent hashing (RING_HASH, MAGLEV) builds its ring or table when the host set changes
//! (EDS update, DNS refresh, outlier ejection), exactly as Envoy builds it — same keys
//! (`ip:port`), same xxHash64, same ordering — so a request hash picks the endpoint Envoy would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::hash::xxhash64;
use crate::model::{Cluster, Discovery, EndpointAddress, EndpointConfig, LbPolicy, Limits};
use crate::outlier::{Detector, HostOutlier, Outcome};

/// Envoy's per-host counters, as `/clusters` prints them.
#[derive(Debug, Default)]
pub struct HostStats {
    pub cx_active: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub cx_total: AtomicU64,
    pub rq_active: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_success: AtomicU64,
    pub rq_timeout: AtomicU64,
    pub rq_total: AtomicU64,
}

/// One upstream endpoint.
#[derive(Debug)]
pub struct Host {
    pub address: SocketAddr,
    /// For DNS clusters, the name the address came from.
    pub hostname: Option<String>,
    pub weight: u32,
    /// Health from the configuration (EDS `health_status`).
    pub healthy: bool,
    pub labels: Vec<(String, String)>,
    pub stats: HostStats,
    /// Passive health: outlier-detection counters and ejection state.
    pub outlier: HostOutlier,
}

impl Host {
    pub fn new(address: SocketAddr, weight: u32, healthy: bool) -> Host {
        Host {
            address,
            hostname: None,
            weight: weight.max(1),
            healthy,
            labels: Vec::new(),
            stats: HostStats::default(),
            outlier: HostOutlier::default(),
        }
    }

    /// Whether load balancing may choose it outside panic mode.
    pub fn is_healthy(&self) -> bool {
        self.healthy && !self.outlier.is_ejected()
    }
}

/// The hosts of a cluster at one moment.
#[derive(Debug, Default)]
pub struct HostSet {
    pub hosts: Vec<Arc<Host>>,
    healthy: Vec<Arc<Host>>,
    /// Fewer healthy hosts than the panic threshold: balance over all of them.
    panic: bool,
    equal_weights: bool,
    /// Round-robin schedule for unequal weights (indices into the active list).
    schedule: Vec<usize>,
    /// Ring or Maglev table over the active hosts (hashing policies only).
    table: HashTable,
}

#[derive(Debug, Default)]
enum HashTable {
    #[default]
    None,
    /// Sorted (point, active-host index).
    Ring(Vec<(u64, u32)>),
    /// Active-host index per slot.
    Maglev(Vec<u32>),
}

/// Envoy's default panic threshold: below this share of healthy hosts, balance over all of them.
const PANIC_THRESHOLD_PERCENT: u32 = 50;

impl HostSet {
    /// A host set with Envoy's default panic threshold and no hashing table.
    pub fn new(hosts: Vec<Arc<Host>>) -> HostSet {
        HostSet::build(hosts, LbPolicy::RoundRobin, PANIC_THRESHOLD_PERCENT)
    }

    /// A host set for `policy`: healthy hosts (not failing EDS health nor ejected), panic mode
    /// when their share is below `panic_threshold` percent, and the ring/table for hashing.
    pub fn build(hosts: Vec<Arc<Host>>, policy: LbPolicy, panic_threshold: u32) -> HostSet {
        let healthy: Vec<Arc<Host>> = hosts.iter().filter(|h| h.is_healthy()).cloned().collect();
        let panic = (healthy.len() as u64) * 100 < (hosts.len() as u64) * u64::from(panic_threshold);
        let active = if panic { &hosts } else { &healthy };
        let equal_weights = active.windows(2).all(|w| w[0].weight == w[1].weight);
        let schedule = if equal_weights {
            Vec::new()
        } else {
            weighted_schedule(active)
        };
        let table = match policy {
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
            } => HashTable::Ring(build_ring(active, min_ring_size, max_ring_size)),
            LbPolicy::Maglev { table_size } => HashTable::Maglev(build_maglev(active, table_size)),
            _ => HashTable::None,
        };
        HostSet {
            hosts,
            healthy,
            panic,
            equal_weights,
            schedule,
            table,
        }
    }

    /// The hosts load balancing chooses from (all of them in panic mode).
    pub fn active(&self) -> &[Arc<Host>] {
        if self.panic {
            &self.hosts
        } else {
            &self.healthy
        }
    }
}

/// Weights normalised to sum 1, in host order (Envoy's `normalizeHostWeights`).
fn normalized(hosts: &[Arc<Host>]) -> (Vec<f64>, f64, f64) {
    let sum: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
    let mut min = 1.0f64;
    let mut max = 0.0f64;
    let w: Vec<f64> = hosts
        .iter()
        .map(|h| {
            let w = f64::from(h.weight) / sum as f64;
            min = min.min(w);
            max = max.max(w);
            w
        })
        .collect();
    (w, min, max)
}

/// Envoy's ring: each host gets `scale × weight` points hashed from `ip:port_i`, where the
/// scale gives the lightest host a whole number of points (at least `min`, at most `max` total).
fn build_ring(hosts: &[Arc<Host>], min: u64, max: u64) -> Vec<(u64, u32)> {
    if hosts.is_empty() {
        return Vec::new();
    }
    let (weights, min_w, _) = normalized(hosts);
    let scale = ((min_w * min as f64).ceil() / min_w).min(max as f64);
    let mut ring = Vec::with_capacity(scale.ceil() as usize);
    let (mut current, mut target) = (0.0f64, 0.0f64);
    for (i, (h, w)) in hosts.iter().zip(&weights).enumerate() {
        let key = h.address.to_string();
        target += scale * w;
        let mut n = 0u64;
        while current < target {
            let point = xxhash64(format!("{key}_{n}").as_bytes(), 0);
            ring.push((point, i as u32));
            n += 1;
            current += 1.0;
        }
    }
    ring.sort_by_key(|(p, _)| *p);
    ring
}

/// Envoy's Maglev table: hosts sorted by `ip:port`, each with an offset and skip from
/// xxHash64 (seeds 0 and 1), filling slots in turn, heavier hosts more often.
fn build_maglev(hosts: &[Arc<Host>], size: u64) -> Vec<u32> {
    if hosts.is_empty() || size < 2 {
        return Vec::new();
    }
    let (weights, _, max_w) = normalized(hosts);
    struct Entry {
        index: u32,
        offset: u64,
        skip: u64,
        weight: f64,
        target: f64,
        next: u64,
    }
    let mut keyed: Vec<(String, u32, f64)> = hosts
        .iter()
        .zip(&weights)
        .enumerate()
        .map(|(i, (h, w))| (h.address.to_string(), i as u32, *w))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut entries: Vec<Entry> = keyed
        .iter()
        .map(|(k, i, w)| Entry {
            index: *i,
            offset: xxhash64(k.as_bytes(), 0) % size,
            skip: xxhash64(k.as_bytes(), 1) % (size - 1) + 1,
            weight: *w,
            target: 0.0,
            next: 0,
        })
        .collect();
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0u64;
    let mut iteration = 1u64;
    while filled < size {
        for e in entries.iter_mut() {
            if filled >= size {
                break;
            }
            if (iteration as f64) * e.weight < e.target {
                continue;
            }
            e.target += max_w;
            let mut c = (e.offset + e.skip * e.next) % size;
            while table[c as usize] != u32::MAX {
                e.next += 1;
                c = (e.offset + e.skip * e.next) % size;
            }
            table[c as usize] = e.index;
            e.next += 1;
            filled += 1;
        }
        iteration += 1;
    }
    table
}

/// An interleaved schedule where each host appears `weight` times (smooth weighted round robin),
/// bounded to a few thousand slots by scaling weights down.
fn weighted_schedule(hosts: &[Arc<Host>]) -> Vec<usize> {
    let total: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
    let scale = (total / 4096).max(1);
    let weights: Vec<i64> = hosts
        .iter()
        .map(|h| (u64::from(h.weight) / scale).max(1) as i64)
        .collect();
    let sum: i64 = weights.iter().sum();
    let mut current = vec![0i64; hosts.len()];
    let mut out = Vec::with_capacity(sum as usize);
    for _ in 0..sum {
        let mut best = 0;
        for i in 0..hosts.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= sum;
        out.push(best);
    }
    out
}

/// Cluster-wide counters (Envoy's `cluster.<name>.*` stats and circuit-breaker gauges). Kept by
/// name across configuration updates.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub upstream_cx_total: AtomicU64,
    pub upstream_cx_active: AtomicU64,
    pub upstream_cx_connect_fail: AtomicU64,
    pub upstream_cx_connect_timeout: AtomicU64,
    pub upstream_cx_overflow: AtomicU64,
    pub upstream_rq_total: AtomicU64,
    pub upstream_rq_active: AtomicU64,
    pub upstream_rq_pending_total: AtomicU64,
    pub upstream_rq_pending_active: AtomicU64,
    pub upstream_rq_pending_overflow: AtomicU64,
    pub upstream_rq_timeout: AtomicU64,
    pub upstream_rq_retry: AtomicU64,
    pub upstream_rq_retry_overflow: AtomicU64,
    pub upstream_rq_2xx: AtomicU64,
    pub upstream_rq_3xx: AtomicU64,
    pub upstream_rq_4xx: AtomicU64,
    pub upstream_rq_5xx: AtomicU64,
    pub upstream_cx_rx_bytes_total: AtomicU64,
    pub upstream_cx_tx_bytes_total: AtomicU64,
    pub upstream_cx_none_healthy: AtomicU64,
    // Outlier detection (`cluster.<name>.outlier_detection.*`).
    pub ejections_enforced_total: AtomicU64,
    pub ejections_overflow: AtomicU64,
    pub ejections_total: AtomicU64,
    pub ejections_consecutive_5xx: AtomicU64,
    pub ejections_success_rate: AtomicU64,
    pub ejections_enforced_consecutive_5xx: AtomicU64,
    pub ejections_detected_consecutive_5xx: AtomicU64,
    pub ejections_enforced_consecutive_gateway_failure: AtomicU64,
    pub ejections_detected_consecutive_gateway_failure: AtomicU64,
    pub ejections_enforced_consecutive_local_origin_failure: AtomicU64,
    pub ejections_detected_consecutive_local_origin_failure: AtomicU64,
    pub ejections_enforced_success_rate: AtomicU64,
    pub ejections_detected_success_rate: AtomicU64,
    pub ejections_enforced_failure_percentage: AtomicU64,
    pub ejections_detected_failure_percentage: AtomicU64,
    /// Circuit-breaker occupancy (gauges).
    pub open_connections: AtomicU32,
    pub open_requests: AtomicU32,
    pub open_pending: AtomicU32,
    pub open_retries: AtomicU32,
}

impl ClusterStats {
    pub fn count_status(&self, status: u16) {
        let c = match status {
            200..=299 => &self.upstream_rq_2xx,
            300..=399 => &self.upstream_rq_3xx,
            400..=499 => &self.upstream_rq_4xx,
            500..=599 => &self.upstream_rq_5xx,
            _ => return,
        };
        c.fetch_add(1, Relaxed);
    }
}

/// A slot held against a circuit-breaker limit; released on drop.
#[derive(Debug)]
pub struct Slot {
    counter: Arc<ClusterStats>,
    which: SlotKind,
}

#[derive(Clone, Copy, Debug)]
pub enum SlotKind {
    Connection,
    Request,
    Pending,
    Retry,
}

impl SlotKind {
    fn gauge(self, s: &ClusterStats) -> &AtomicU32 {
        match self {
            SlotKind::Connection => &s.open_connections,
            SlotKind::Request => &s.open_requests,
            SlotKind::Pending => &s.open_pending,
            SlotKind::Retry => &s.open_retries,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.which.gauge(&self.counter).fetch_sub(1, Relaxed);
        match self.which {
            SlotKind::Connection => self.counter.upstream_cx_active.fetch_sub(1, Relaxed),
            SlotKind::Request => self.counter.upstream_rq_active.fetch_sub(1, Relaxed),
            SlotKind::Pending => self.counter.upstream_rq_pending_active.fetch_sub(1, Relaxed),
            SlotKind::Retry => 0,
        };
    }
}

/// What load balancing may look at besides the host set.
#[derive(Clone, Copy, Debug, Default)]
pub struct LbContext {
    /// The connection's original destination (ORIGINAL_DST clusters).
    pub original_dst: Option<SocketAddr>,
    /// The request hash (RING_HASH / MAGLEV); random when absent, as in Envoy.
    pub hash: Option<u64>,
}

/// A cluster's live state: configuration, hosts, counters.
#[derive(Debug)]
pub struct ClusterState {
    pub config: Arc<Cluster>,
    hosts: ArcSwap<HostSet>,
    rr: AtomicUsize,
    pub stats: Arc<ClusterStats>,
    /// ORIGINAL_DST hosts, created as connections arrive.
    dynamic_hosts: Mutex<HashMap<SocketAddr, Arc<Host>>>,
    /// Identity of the EDS assignment the hosts came from (unchanged: reuse this state).
    pub eds_token: Option<Arc<()>>,
    /// Outlier detection, when configured.
    detector: Option<Detector>,
}

impl ClusterState {
    /// Builds a cluster, keeping host objects (and their counters) from `previous` by address.
    pub fn new(
        config: Arc<Cluster>,
        stats: Arc<ClusterStats>,
        previous: Option<&ClusterState>,
    ) -> ClusterState {
        let state = ClusterState {
            config: config.clone(),
            hosts: ArcSwap::from_pointee(HostSet::default()),
            rr: AtomicUsize::new(fastrand::usize(..1024)),
            stats,
            dynamic_hosts: Mutex::new(HashMap::new()),
            eds_token: None,
            detector: config.outlier_detection.clone().map(Detector::new),
        };
        // DNS and EDS clusters keep their discovered hosts until the next refresh.
        let carry = previous.filter(|p| {
            p.config.discovery == state.config.discovery
                && !matches!(state.config.discovery, Discovery::Static)
        });
        match carry {
            Some(p)
                if state.config.endpoints.is_empty()
                    || matches!(
                        state.config.discovery,
                        Discovery::StrictDns | Discovery::LogicalDns
                    ) =>
            {
                let hosts = p.hosts.load().hosts.clone();
                state.store_hosts(hosts);
            }
            _ => state.set_endpoints(&state.config.endpoints, previous),
        }
        state
    }

    fn store_hosts(&self, hosts: Vec<Arc<Host>>) {
        self.hosts.store(Arc::new(HostSet::build(
            hosts,
            self.config.lb_policy,
            self.config.healthy_panic_threshold,
        )));
    }

    /// Rebuilds the host set from the same hosts (health changed: ejection, unejection).
    pub fn rebuild_hosts(&self) {
        let hosts = self.hosts.load().hosts.clone();
        self.store_hosts(hosts);
    }

    pub fn contains_host(&self, host: &Arc<Host>) -> bool {
        self.hosts.load().hosts.iter().any(|h| Arc::ptr_eq(h, host))
    }

    /// Hosts currently ejected by outlier detection (`outlier_detection.ejections_active`).
    pub fn ejections_active(&self) -> usize {
        self.hosts
            .load()
            .hosts
            .iter()
            .filter(|h| h.outlier.is_ejected())
            .count()
    }

    /// Tells outlier detection how an exchange with `host` went. Free without a detector.
    pub fn report(&self, host: &Arc<Host>, outcome: Outcome) {
        if let Some(d) = &self.detector {
            d.report(self, host, outcome);
        }
    }

    /// Runs outlier-detection interval ticks that are due (before reading health).
    pub fn tick(&self) {
        if let Some(d) = &self.detector {
            d.tick(self, std::time::Instant::now());
        }
    }

    pub fn has_outlier_detection(&self) -> bool {
        self.detector.is_some()
    }

    /// Replaces the hosts (EDS update, DNS refresh), keeping counters of hosts that stay.
    pub fn set_endpoints(&self, endpoints: &[EndpointConfig], previous: Option<&ClusterState>) {
        let old = previous
            .map(|p| p.hosts.load_full())
            .unwrap_or_else(|| self.hosts.load_full());
        let mut hosts = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let EndpointAddress::Socket(addr) = e.address else {
                continue;
            };
            hosts.push(reuse_or_new(&old, addr, e, None));
        }
        self.store_hosts(hosts);
    }

    /// Sets resolved DNS addresses: every address becomes a host (STRICT_DNS), or the first (LOGICAL_DNS).
    pub fn set_resolved(&self, resolved: &[(EndpointConfig, Vec<SocketAddr>)]) {
        let old = self.hosts.load_full();
        let mut hosts = Vec::new();
        for (e, addrs) in resolved {
            let name = match &e.address {
                EndpointAddress::Dns(n, _) => Some(n.clone()),
                EndpointAddress::Socket(_) => None,
            };
            let take = if self.config.discovery == Discovery::LogicalDns {
                1
            } else {
                addrs.len()
            };
            for addr in addrs.iter().take(take) {
                hosts.push(reuse_or_new(&old, *addr, e, name.clone()));
            }
        }
        self.store_hosts(hosts);
    }

    pub fn host_set(&self) -> Arc<HostSet> {
        self.hosts.load_full()
    }

    /// Every host, including ORIGINAL_DST hosts seen so far (for `/clusters`).
    pub fn all_hosts(&self) -> Vec<Arc<Host>> {
        let mut v = self.hosts.load().hosts.clone();
        v.extend(
            self.dynamic_hosts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned(),
        );
        v
    }

    /// Picks a host, or `None` when there is no healthy one (Envoy's `UH`).
    pub fn pick(&self, ctx: LbContext) -> Option<Arc<Host>> {
        if self.config.discovery == Discovery::OriginalDst {
            let dst = ctx.original_dst?;
            let mut map = self.dynamic_hosts.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 4096 {
                // Forget hosts nobody holds any more (Envoy's cleanup_interval).
                map.retain(|_, h| Arc::strong_count(h) > 1);
            }
            return Some(
                map.entry(dst)
                    .or_insert_with(|| Arc::new(Host::new(dst, 1, true)))
                    .clone(),
            );
        }
        self.tick();
        let set = self.hosts.load();
        pick_from(&set, self.config.lb_policy, &self.rr, ctx.hash, 0)
    }

    /// Envoy's host selection with a retry host predicate: choose up to `max_attempts` times
    /// while `reject` says the host was already tried; the last choice stands.
    pub fn pick_avoiding(
        &self,
        ctx: LbContext,
        max_attempts: u32,
        reject: impl Fn(&Host) -> bool,
    ) -> Option<Arc<Host>> {
        if self.config.discovery == Discovery::OriginalDst {
            return self.pick(ctx);
        }
        self.tick();
        let set = self.hosts.load();
        let mut host = None;
        for attempt in 0..max_attempts.max(1) {
            host = pick_from(&set, self.config.lb_policy, &self.rr, ctx.hash, attempt);
            match &host {
                Some(h) if reject(h) => continue,
                _ => break,
            }
        }
        host
    }

    /// Takes a slot against a circuit-breaker limit, or counts an overflow and returns `None`.
    pub fn try_acquire(&self, kind: SlotKind) -> Option<Slot> {
        let l: Limits = self.config.limits;
        let max = match kind {
            SlotKind::Connection => l.max_connections,
            SlotKind::Request => l.max_requests,
            SlotKind::Pending => l.max_pending_requests,
            SlotKind::Retry => l.max_retries,
        };
        let gauge = kind.gauge(&self.stats);
        let mut cur = gauge.load(Relaxed);
        loop {
            if cur >= max {
                let overflow = match kind {
                    SlotKind::Connection => &self.stats.upstream_cx_overflow,
                    SlotKind::Pending | SlotKind::Request => &self.stats.upstream_rq_pending_overflow,
                    SlotKind::Retry => &self.stats.upstream_rq_retry_overflow,
                };
                overflow.fetch_add(1, Relaxed);
                return None;
            }
            match gauge.compare_exchange_weak(cur, cur + 1, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        match kind {
            SlotKind::Connection => {
                self.stats.upstream_cx_active.fetch_add(1, Relaxed);
            }
            SlotKind::Request => {
                self.stats.upstream_rq_active.fetch_add(1, Relaxed);
            }
            SlotKind::Pending => {
                self.stats.upstream_rq_pending_active.fetch_add(1, Relaxed);
                self.stats.upstream_rq_pending_total.fetch_add(1, Relaxed);
            }
            SlotKind::Retry => {}
        }
        Some(Slot {
            counter: self.stats.clone(),
            which: kind,
        })
    }
}

fn reuse_or_new(old: &HostSet, addr: SocketAddr, e: &EndpointConfig, hostname: Option<String>) -> Arc<Host> {
    // Hosts that stay keep their counters and outlier state (an EDS push does not uneject).
    match old.hosts.iter().find(|h| {
        h.address == addr && h.weight == e.weight.max(1) && h.healthy == e.healthy && h.labels == e.labels
    }) {
        Some(h) => h.clone(),
        None => Arc::new(Host {
            address: addr,
            hostname,
            weight: e.weight.max(1),
            healthy: e.healthy,
            labels: e.labels.clone(),
            stats: HostStats::default(),
            outlier: HostOutlier::default(),
        }),
    }
}

/// The load-balancing decision itself. `attempt` > 0 is a re-selection for a retry host
/// predicate (hashing policies then move off the first choice as Envoy does).
pub fn pick_from(
    set: &HostSet,
    policy: LbPolicy,
    rr: &AtomicUsize,
    hash: Option<u64>,
    attempt: u32,
) -> Option<Arc<Host>> {
    let hosts = set.active();
    if hosts.is_empty() {
        return None;
    }
    match &set.table {
        HashTable::Ring(ring) if !ring.is_empty() => {
            let h = hash.unwrap_or_else(|| fastrand::u64(..));
            let mut i = ring.partition_point(|(p, _)| *p < h);
            if i == ring.len() {
                i = 0;
            }
            if attempt > 0 {
                i = (i + attempt as usize) % ring.len();
            }
            return hosts.get(ring[i].1 as usize).cloned();
        }
        HashTable::Maglev(table) if !table.is_empty() => {
            let mut h = hash.unwrap_or_else(|| fastrand::u64(..));
            if attempt > 0 {
                h ^= u64::MAX.wrapping_sub(u64::from(attempt)).wrapping_add(1);
            }
            let slot = table[(h % table.len() as u64) as usize];
            return hosts.get(slot as usize).cloned();
        }
        _ => {}
    }
    if hosts.len() == 1 {
        return Some(hosts[0].clone());
    }
    let weighted_random = || {
        let total: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
        let mut r = fastrand::u64(0..total);
        for h in hosts {
            if r < u64::from(h.weight) {
                return h.clone();
            }
            r -= u64::from(h.weight);
        }
        hosts[hosts.len() - 1].clone()
    };
    Some(match policy {
        LbPolicy::RoundRobin
        | LbPolicy::ClusterProvided
        | LbPolicy::RingHash { .. }
        | LbPolicy::Maglev { .. } => {
            let n = rr.fetch_add(1, Relaxed);
            if set.equal_weights || set.schedule.is_empty() {
                hosts[n % hosts.len()].clone()
            } else {
                hosts[set.schedule[n % set.schedule.len()] % hosts.len()].clone()
            }
        }
        LbPolicy::Random => {
            if set.equal_weights {
                hosts[fastrand::usize(..hosts.len())].clone()
            } else {
                weighted_random()
            }
        }
        LbPolicy::LeastRequest { choice_count } => {
            if set.equal_weights {
                // Power of N choices: the least loaded of N random hosts.
                let mut best = hosts[fastrand::usize(..hosts.len())].clone();
                for _ in 1..choice_count {
                    let c = &hosts[fastrand::usize(..hosts.len())];
                    if c.stats.rq_active.load(Relaxed) < best.stats.rq_active.load(Relaxed) {
                        best = c.clone();
                    }
                }
                best
            } else {
                // Envoy: weight / (active + 1), chosen proportionally.
                let eff: Vec<f64> = hosts
                    .iter()
                    .map(|h| f64::from(h.weight) / (h.stats.rq_active.load(Relaxed) as f64 + 1.0))
                    .collect();
                let total: f64 = eff.iter().sum();
                let mut r = fastrand::f64() * total;
                let mut chosen = hosts.len() - 1;
                for (i, e) in eff.iter().enumerate() {
                    if r < *e {
                        chosen = i;
                        break;
                    }
                    r -= e;
                }
                hosts[chosen].clone()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(weights: &[u32], healthy: &[bool]) -> HostSet {
        HostSet::new(
            weights
                .iter()
                .zip(healthy)
                .enumerate()
                .map(|(i, (w, h))| {
                    Arc::new(Host::new(
                        SocketAddr::from(([198, 18, 0, i as u8 + 1], 80)),
                        *w,
                        *h,
                    ))
                })
                .collect(),
        )
    }

    fn counts(s: &HostSet, policy: LbPolicy, n: usize) -> Vec<usize> {
        let rr = AtomicUsize::new(0);
        let mut c = vec![0; s.hosts.len()];
        for _ in 0..n {
            let h = pick_from(s, policy, &rr, None, 0).unwrap();
            let i = s.hosts.iter().position(|x| Arc::ptr_eq(x, &h)).unwrap();
            c[i] += 1;
        }
        c
    }

    /// Pearson's chi-square statistic against expected shares.
    fn chi2(observed: &[usize], expected_share: &[f64]) -> f64 {
        let n: usize = observed.iter().sum();
        observed
            .iter()
            .zip(expected_share)
            .map(|(o, p)| {
                let e = p * n as f64;
                (*o as f64 - e).powi(2) / e
            })
            .sum()
    }

    #[test]
    fn round_robin_is_exact_and_weighted_round_robin_proportional() {
        let s = set(&[1, 1, 1], &[true, true, true]);
        assert_eq!(counts(&s, LbPolicy::RoundRobin, 3000), vec![1000, 1000, 1000]);
        let w = set(&[1, 3], &[true, true]);
        assert_eq!(counts(&w, LbPolicy::RoundRobin, 4000), vec![1000, 3000]);
    }

    #[test]
    fn random_and_least_request_are_statistically_fair() {
        // chi-square critical value for 2 degrees of freedom at p = 0.001 is 13.8.
        let s = set(&[1, 1, 1], &[true, true, true]);
        let c = counts(&s, LbPolicy::Random, 3000);
        assert!(chi2(&c, &[1.0 / 3.0; 3]) < 13.8, "{c:?}");
        let c = counts(&s, LbPolicy::LeastRequest { choice_count: 2 }, 3000);
        assert!(chi2(&c, &[1.0 / 3.0; 3]) < 13.8, "{c:?}");
        let w = set(&[1, 2, 7], &[true, true, true]);
        let c = counts(&w, LbPolicy::Random, 5000);
        assert!(chi2(&c, &[0.1, 0.2, 0.7]) < 13.8, "{c:?}");
        let c = counts(&w, LbPolicy::LeastRequest { choice_count: 2 }, 5000);
        assert!(chi2(&c, &[0.1, 0.2, 0.7]) < 13.8, "{c:?}");
    }

    #[test]
    fn least_request_avoids_busy_hosts() {
        let s = set(&[1, 1], &[true, true]);
        s.hosts[0].stats.rq_active.store(50, Relaxed);
        let c = counts(&s, LbPolicy::LeastRequest { choice_count: 2 }, 1000);
        // Host 0 is only chosen when both random picks land on it (1/4 of the time).
        assert!(c[0] < 320 && c[1] > 680, "{c:?}");
    }

    #[test]
    fn unhealthy_hosts_are_skipped_until_panic() {
        let s = set(&[1, 1, 1], &[true, true, false]);
        let c = counts(&s, LbPolicy::RoundRobin, 300);
        assert_eq!(c, vec![150, 150, 0]);
        // One of three healthy is below the 50% panic threshold: all hosts take traffic.
        let p = set(&[1, 1, 1], &[true, false, false]);
        assert_eq!(counts(&p, LbPolicy::RoundRobin, 300), vec![100, 100, 100]);
        let none = set(&[], &[]);
        assert!(pick_from(&none, LbPolicy::RoundRobin, &AtomicUsize::new(0), None, 0).is_none());
    }
}
