//! Clusters at run time: their hosts (with Envoy's per-host counters), load balancing, and the
//! circuit-breaker accounting shared by every worker. Host selection is pure given the host set
//! and a random source, so its distributions are tested statistically.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::model::{Cluster, Discovery, EndpointAddress, EndpointConfig, LbPolicy, Limits};

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
    pub healthy: bool,
    pub labels: Vec<(String, String)>,
    pub stats: HostStats,
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
        }
    }
}

/// The hosts of a cluster at one moment.
#[derive(Debug, Default)]
pub struct HostSet {
    pub hosts: Vec<Arc<Host>>,
    healthy: Vec<Arc<Host>>,
    equal_weights: bool,
    /// Round-robin schedule for unequal weights (indices into the active list).
    schedule: Vec<usize>,
}

/// Envoy's panic threshold: below this share of healthy hosts, balance over all of them.
const PANIC_THRESHOLD_PERCENT: usize = 50;

impl HostSet {
    pub fn new(hosts: Vec<Arc<Host>>) -> HostSet {
        let healthy: Vec<Arc<Host>> = hosts.iter().filter(|h| h.healthy).cloned().collect();
        let active = if healthy.len() * 100 < hosts.len() * PANIC_THRESHOLD_PERCENT {
            &hosts
        } else {
            &healthy
        };
        let equal_weights = active.windows(2).all(|w| w[0].weight == w[1].weight);
        let schedule = if equal_weights {
            Vec::new()
        } else {
            weighted_schedule(active)
        };
        HostSet {
            hosts,
            healthy,
            equal_weights,
            schedule,
        }
    }

    /// The hosts load balancing chooses from (all of them in panic mode).
    pub fn active(&self) -> &[Arc<Host>] {
        if self.healthy.len() * 100 < self.hosts.len() * PANIC_THRESHOLD_PERCENT {
            &self.hosts
        } else {
            &self.healthy
        }
    }
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
}

impl ClusterState {
    /// Builds a cluster, keeping host objects (and their counters) from `previous` by address.
    pub fn new(
        config: Arc<Cluster>,
        stats: Arc<ClusterStats>,
        previous: Option<&ClusterState>,
    ) -> ClusterState {
        let state = ClusterState {
            config,
            hosts: ArcSwap::from_pointee(HostSet::default()),
            rr: AtomicUsize::new(fastrand::usize(..1024)),
            stats,
            dynamic_hosts: Mutex::new(HashMap::new()),
            eds_token: None,
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
                state.hosts.store(p.hosts.load_full());
            }
            _ => state.set_endpoints(&state.config.endpoints, previous),
        }
        state
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
        self.hosts.store(Arc::new(HostSet::new(hosts)));
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
        self.hosts.store(Arc::new(HostSet::new(hosts)));
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
        let set = self.hosts.load();
        pick_from(&set, self.config.lb_policy, &self.rr)
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
        }),
    }
}

/// The load-balancing decision itself.
pub fn pick_from(set: &HostSet, policy: LbPolicy, rr: &AtomicUsize) -> Option<Arc<Host>> {
    let hosts = set.active();
    if hosts.is_empty() {
        return None;
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
        LbPolicy::RoundRobin | LbPolicy::ClusterProvided => {
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
            let h = pick_from(s, policy, &rr).unwrap();
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
        assert!(pick_from(&none, LbPolicy::RoundRobin, &AtomicUsize::new(0)).is_none());
    }
}
