//! Outlier detection (passive health checking) with Envoy's semantics: per-host consecutive
//! 5xx / gateway-failure / local-origin-failure counters that eject a host when they reach their
//! threshold (subject to `enforcing_*` and `max_ejection_percent`), success-rate and
//! failure-percentage ejections evaluated every `interval`, and unejection at the first interval
//! tick after `base_ejection_time × backoff` (backoff grows with repeated ejections, capped by
//! `max_ejection_time`, and decays while the host stays healthy).
//!
//! Envoy runs the interval on a timer; Skiff processes the ticks that are due lazily — before
//! recording a result, before picking a host and before `/clusters` reads the state — which
//! gives the same decisions at every point anyone can observe, with no task per cluster and no
//! cost at all for clusters without `outlier_detection`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::{ClusterState, ClusterStats, Host};
use crate::model::OutlierDetection;

/// What one upstream exchange told us about a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived with this status.
    Http(u16),
    /// The connection could not be made (or was reset before a response).
    ConnectFailed,
    /// The request (or try) timed out.
    Timeout,
    /// A connection was established (split mode resets the local-origin counter).
    ConnectSuccess,
}

/// Why a host is ejected (`envoy.data.cluster.v3.OutlierEjectionType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Consecutive5xx,
    ConsecutiveGateway,
    ConsecutiveLocal,
    SuccessRate,
    FailurePercentage,
}

/// A host's outlier-detection state. Counters are atomics (every worker reports); the ejection
/// bookkeeping is behind a lock taken only on ejection paths and interval ticks.
#[derive(Debug, Default)]
pub struct HostOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    ejected: AtomicBool,
    /// Success-rate bucket being written (external origin).
    success: AtomicU64,
    total: AtomicU64,
    state: Mutex<EjectionState>,
}

#[derive(Debug, Default)]
struct EjectionState {
    num_ejections: u32,
    backoff: u32,
    last_ejection: Option<Instant>,
    last_unejection: Option<Instant>,
    /// Last interval's success rate, for `/clusters` (`None` prints -1).
    success_rate: Option<f64>,
}

impl HostOutlier {
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Relaxed)
    }

    /// The success rate `/clusters` shows (-1 when not computed).
    pub fn success_rate(&self) -> f64 {
        self.lock().success_rate.unwrap_or(-1.0)
    }

    pub fn num_ejections(&self) -> u32 {
        self.lock().num_ejections
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EjectionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A cluster's detector: configuration and the interval clock.
#[derive(Debug)]
pub struct Detector {
    pub config: OutlierDetection,
    epoch: Instant,
    /// Interval ticks processed so far.
    ticks: AtomicU64,
    /// When the next tick is due, in ms since `epoch` (fast-path check).
    next_due_ms: AtomicU64,
    lock: Mutex<()>,
}

fn pct_enabled(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && fastrand::u32(0..100) < percent)
}

impl Detector {
    pub fn new(config: OutlierDetection) -> Detector {
        let interval_ms = config.interval.as_millis() as u64;
        Detector {
            config,
            epoch: Instant::now(),
            ticks: AtomicU64::new(0),
            next_due_ms: AtomicU64::new(interval_ms),
            lock: Mutex::new(()),
        }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one outcome for `host` and ejects it if a consecutive counter trips.
    pub fn report(&self, cluster: &ClusterState, host: &Arc<Host>, outcome: Outcome) {
        self.tick(cluster, Instant::now());
        let o = &host.outlier;
        let cfg = &self.config;
        let code = match outcome {
            Outcome::Http(c) => Some(c),
            _ if cfg.split_external_local_origin_errors => {
                match outcome {
                    Outcome::ConnectFailed | Outcome::Timeout => {
                        let n = o.consecutive_local.fetch_add(1, Relaxed) + 1;
                        if n == cfg.consecutive_local_origin_failure {
                            self.on_consecutive(cluster, host, Kind::ConsecutiveLocal);
                        }
                    }
                    _ => o.consecutive_local.store(0, Relaxed),
                }
                None
            }
            // Without the split, local-origin events count as the HTTP codes they cause.
            Outcome::ConnectFailed => Some(503),
            Outcome::Timeout => Some(504),
            Outcome::ConnectSuccess => None,
        };
        let Some(code) = code else { return };
        o.total.fetch_add(1, Relaxed);
        if (500..600).contains(&code) {
            if matches!(code, 502..=504) {
                let n = o.consecutive_gateway.fetch_add(1, Relaxed) + 1;
                if n == cfg.consecutive_gateway_failure {
                    self.on_consecutive(cluster, host, Kind::ConsecutiveGateway);
                }
            } else {
                o.consecutive_gateway.store(0, Relaxed);
            }
            let n = o.consecutive_5xx.fetch_add(1, Relaxed) + 1;
            if n == cfg.consecutive_5xx {
                self.on_consecutive(cluster, host, Kind::Consecutive5xx);
            }
        } else {
            o.success.fetch_add(1, Relaxed);
            o.consecutive_5xx.store(0, Relaxed);
            o.consecutive_gateway.store(0, Relaxed);
        }
    }

    fn on_consecutive(&self, cluster: &ClusterState, host: &Arc<Host>, kind: Kind) {
        let _g = self.guard();
        if host.outlier.is_ejected() || !cluster.contains_host(host) {
            return;
        }
        detected(&cluster.stats, kind);
        self.eject(cluster, host, kind, Instant::now());
        match kind {
            Kind::Consecutive5xx => {
                cluster.stats.ejections_consecutive_5xx.fetch_add(1, Relaxed);
                host.outlier.consecutive_5xx.store(0, Relaxed);
            }
            Kind::ConsecutiveGateway => host.outlier.consecutive_gateway.store(0, Relaxed),
            Kind::ConsecutiveLocal => host.outlier.consecutive_local.store(0, Relaxed),
            _ => {}
        }
    }

    /// Ejects `host` if the ejection cap and the enforcement percentage allow. Caller holds the
    /// detector lock.
    fn eject(&self, cluster: &ClusterState, host: &Arc<Host>, kind: Kind, now: Instant) {
        let cfg = &self.config;
        let hosts = cluster.host_set().hosts.len().max(1);
        let active = cluster.ejections_active();
        let ejected_percent = 100.0 * (active + 1) as f64 / hosts as f64;
        let should = ejected_percent <= f64::from(cfg.max_ejection_percent.min(100))
            || (cfg.always_eject_one_host && active == 0);
        let stats = &cluster.stats;
        if !should {
            stats.ejections_overflow.fetch_add(1, Relaxed);
            return;
        }
        if matches!(kind, Kind::Consecutive5xx | Kind::SuccessRate) {
            stats.ejections_total.fetch_add(1, Relaxed);
        }
        let enforcing = match kind {
            Kind::Consecutive5xx => cfg.enforcing_consecutive_5xx,
            Kind::ConsecutiveGateway => cfg.enforcing_consecutive_gateway_failure,
            Kind::ConsecutiveLocal => cfg.enforcing_consecutive_local_origin_failure,
            Kind::SuccessRate => cfg.enforcing_success_rate,
            Kind::FailurePercentage => cfg.enforcing_failure_percentage,
        };
        if !pct_enabled(enforcing) {
            return;
        }
        stats.ejections_enforced_total.fetch_add(1, Relaxed);
        let c = match kind {
            Kind::Consecutive5xx => &stats.ejections_enforced_consecutive_5xx,
            Kind::ConsecutiveGateway => &stats.ejections_enforced_consecutive_gateway_failure,
            Kind::ConsecutiveLocal => &stats.ejections_enforced_consecutive_local_origin_failure,
            Kind::SuccessRate => &stats.ejections_enforced_success_rate,
            Kind::FailurePercentage => &stats.ejections_enforced_failure_percentage,
        };
        c.fetch_add(1, Relaxed);
        {
            let mut st = host.outlier.lock();
            st.num_ejections += 1;
            st.last_ejection = Some(now);
            let base = cfg.base_ejection_time;
            if base.saturating_mul(st.backoff) < cfg.max_ejection_time + base {
                st.backoff += 1;
            }
        }
        host.outlier.ejected.store(true, Relaxed);
        tracing::info!(cluster = %cluster.config.name, host = %host.address, ?kind, "outlier ejected");
        cluster.rebuild_hosts();
    }

    /// Processes every interval tick due by `now`.
    pub fn tick(&self, cluster: &ClusterState, now: Instant) {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        if now_ms < self.next_due_ms.load(Relaxed) {
            return;
        }
        let _g = self.guard();
        let interval = self.config.interval;
        let interval_ms = (interval.as_millis() as u64).max(1);
        let mut changed = false;
        loop {
            let next = self.ticks.load(Relaxed) + 1;
            let due = next * interval_ms;
            if due > now_ms {
                self.next_due_ms.store(due, Relaxed);
                break;
            }
            self.ticks.store(next, Relaxed);
            let at = self.epoch + Duration::from_millis(due);
            changed |= self.on_interval(cluster, at);
        }
        if changed {
            cluster.rebuild_hosts();
        }
    }

    /// One interval tick at time `at`. Returns whether any host changed state.
    fn on_interval(&self, cluster: &ClusterState, at: Instant) -> bool {
        let cfg = &self.config;
        let set = cluster.host_set();
        let mut changed = false;
        // Unejections.
        for h in &set.hosts {
            if !h.outlier.is_ejected() {
                continue;
            }
            let mut st = h.outlier.lock();
            let ejected_for = st
                .last_ejection
                .map_or(Duration::MAX, |t| at.saturating_duration_since(t));
            let hold = cfg
                .base_ejection_time
                .saturating_mul(st.backoff)
                .min(cfg.max_ejection_time);
            if hold <= ejected_for {
                st.last_unejection = Some(at);
                drop(st);
                h.outlier.ejected.store(false, Relaxed);
                h.outlier.consecutive_5xx.store(0, Relaxed);
                h.outlier.consecutive_gateway.store(0, Relaxed);
                h.outlier.consecutive_local.store(0, Relaxed);
                tracing::info!(cluster = %cluster.config.name, host = %h.address, "outlier unejected");
                changed = true;
            }
        }
        // Success rate and failure percentage over the interval that just ended.
        let mut rates: Vec<(&Arc<Host>, f64, u64)> = Vec::new();
        for h in &set.hosts {
            let success = h.outlier.success.swap(0, Relaxed);
            let total = h.outlier.total.swap(0, Relaxed);
            let mut st = h.outlier.lock();
            st.success_rate = None;
            if h.outlier.is_ejected() || total == 0 {
                continue;
            }
            let rate = success as f64 * 100.0 / total as f64;
            if total
                >= u64::from(
                    cfg.success_rate_request_volume
                        .min(cfg.failure_percentage_request_volume),
                )
            {
                st.success_rate = Some(rate);
            }
            rates.push((h, rate, total));
        }
        let hosts = set.hosts.len() as u64;
        let sr: Vec<&(&Arc<Host>, f64, u64)> = rates
            .iter()
            .filter(|(_, _, v)| *v >= u64::from(cfg.success_rate_request_volume))
            .collect();
        if hosts >= u64::from(cfg.success_rate_minimum_hosts)
            && !sr.is_empty()
            && sr.len() as u64 >= u64::from(cfg.success_rate_minimum_hosts)
        {
            let mean = sr.iter().map(|(_, r, _)| r).sum::<f64>() / sr.len() as f64;
            let var = sr.iter().map(|(_, r, _)| (r - mean).powi(2)).sum::<f64>() / sr.len() as f64;
            let threshold = mean - f64::from(cfg.success_rate_stdev_factor) / 1000.0 * var.sqrt();
            for (h, r, _) in &sr {
                if *r < threshold && !h.outlier.is_ejected() {
                    cluster.stats.ejections_success_rate.fetch_add(1, Relaxed);
                    detected(&cluster.stats, Kind::SuccessRate);
                    self.eject(cluster, h, Kind::SuccessRate, at);
                    changed = true;
                }
            }
        }
        let fp: Vec<&(&Arc<Host>, f64, u64)> = rates
            .iter()
            .filter(|(_, _, v)| *v >= u64::from(cfg.failure_percentage_request_volume))
            .collect();
        if hosts >= u64::from(cfg.failure_percentage_minimum_hosts)
            && !fp.is_empty()
            && fp.len() as u64 >= u64::from(cfg.failure_percentage_minimum_hosts)
        {
            for (h, r, _) in &fp {
                if 100.0 - r >= f64::from(cfg.failure_percentage_threshold) && !h.outlier.is_ejected() {
                    detected(&cluster.stats, Kind::FailurePercentage);
                    self.eject(cluster, h, Kind::FailurePercentage, at);
                    changed = true;
                }
            }
        }
        // Backoff decays for hosts that stayed healthy for an interval after unejection.
        for h in &set.hosts {
            if h.outlier.is_ejected() {
                continue;
            }
            let mut st = h.outlier.lock();
            if st
                .last_unejection
                .is_some_and(|t| at.saturating_duration_since(t) >= cfg.interval)
                && st.backoff > 0
            {
                st.backoff -= 1;
            }
        }
        changed
    }
}

fn detected(stats: &ClusterStats, kind: Kind) {
    let c = match kind {
        Kind::Consecutive5xx => &stats.ejections_detected_consecutive_5xx,
        Kind::ConsecutiveGateway => &stats.ejections_detected_consecutive_gateway_failure,
        Kind::ConsecutiveLocal => &stats.ejections_detected_consecutive_local_origin_failure,
        Kind::SuccessRate => &stats.ejections_detected_success_rate,
        Kind::FailurePercentage => &stats.ejections_detected_failure_percentage,
    };
    c.fetch_add(1, Relaxed);
}
