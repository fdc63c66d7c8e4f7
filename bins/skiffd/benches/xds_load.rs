//! Control-plane load: `skiffd --config-dir` with 1,000 Services × 3 endpoints and 100 connected
//! proxies (real gRPC ADS clients, Skiff's own client with a sink that decodes and counts what it
//! gets). Measures time to the first full push on every proxy, time for one endpoint change to
//! reach every proxy, skiffd's CPU and RSS, and bytes of configuration per proxy.
//!
//! `cargo bench -p skiffd --bench xds_load` (release build; prints a Markdown table). Loopback
//! only. Options through the environment: `XDS_SERVICES` (1000), `XDS_PROXIES` (100),
//! `XDS_ROUNDS` (5), `XDS_DEBOUNCE` (skiffd's `--debounce-after`, Istio's 100ms),
//! `XDS_EDS_DEBOUNCE` (`--eds-debounce`, Istio's true), `XDS_LOG` (skiffd's log level, shown),
//! `XDS_WRAP` (a profiler command to run skiffd under).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use xds::client::{Client, ConfigSink, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use xds::pb::envoy::config::cluster::v3::{cluster::ClusterDiscoveryType, cluster::DiscoveryType, Cluster};
use xds::pb::envoy::config::core::v3::{address, Node};
use xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds::pb::google::protobuf::Any;

const SKIFFD: &str = env!("CARGO_BIN_EXE_skiffd");

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pod_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 16, 0)) + n as u32)
}

fn vip(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 16, 0)) + n as u32)
}

/// The registry: one namespace, `services` Services with three ready pods each.
fn write_registry(dir: &Path, services: usize, moved: Option<(usize, Ipv4Addr)>) {
    let mut svc = String::new();
    let mut pods = String::new();
    for i in 0..services {
        svc.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\n\
             spec: {{clusterIP: {}, selector: {{app: svc-{i}}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n",
            vip(i)
        ));
        for r in 0..3 {
            let n = i * 3 + r;
            let ip = match moved {
                Some((m, ip)) if m == n => ip,
                _ => pod_ip(n),
            };
            pods.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: svc-{i}-{r}, namespace: bench, labels: {{app: svc-{i}}}}}\n\
                 spec: {{containers: [{{name: app, ports: [{{containerPort: 8080}}]}}]}}\n\
                 status: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: 'True'}}]}}\n"
            ));
        }
    }
    // Every write is atomic (a rename), as `kubectl`-style tools and editors do: skiffd never
    // polls a half-written file. Only the pods change between rounds.
    let write = |name: &str, text: &str| {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, dir.join(name)).unwrap();
    };
    if moved.is_none() {
        write(
            "00-ns.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n",
        );
        write("10-services.yaml", &svc);
    }
    write("20-pods.yaml", &pods);
}

/// What one proxy has received.
#[derive(Default)]
struct Seen {
    eds_clusters: HashSet<String>,
    endpoints_of: HashSet<String>,
    routes: bool,
    listeners: bool,
    bytes: u64,
    complete_at: Option<Instant>,
    /// When the watched endpoint IP first appeared.
    watched_at: Option<Instant>,
}

struct Sink {
    seen: Arc<Mutex<Seen>>,
    watch: Arc<Mutex<Option<String>>>,
    complete: Arc<AtomicUsize>,
    bytes_total: Arc<AtomicU64>,
}

impl ConfigSink for Sink {
    fn apply(&mut self, type_url: &str, _version: &str, resources: &[Any]) -> Result<(), String> {
        let mut s = self.seen.lock().unwrap();
        let bytes: u64 = resources.iter().map(|r| r.value.len() as u64).sum();
        s.bytes += bytes;
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
        match type_url {
            CLUSTER => {
                s.eds_clusters = resources
                    .iter()
                    .filter_map(|r| Cluster::decode(r.value.as_slice()).ok())
                    .filter(|c| {
                        c.cluster_discovery_type
                            == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
                    })
                    .map(|c| c.name)
                    .collect();
            }
            LISTENER => s.listeners = true,
            ROUTE => s.routes = true,
            ENDPOINT => {
                let watch = self.watch.lock().unwrap().clone();
                for r in resources {
                    let Ok(cla) = ClusterLoadAssignment::decode(r.value.as_slice()) else {
                        continue;
                    };
                    s.endpoints_of.insert(cla.cluster_name.clone());
                    if let Some(w) = &watch {
                        let has = cla.endpoints.iter().flat_map(|l| &l.lb_endpoints).any(|e| {
                            let addr = e.host_identifier.as_ref().and_then(|h| match h {
                                xds::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep) => ep.address.as_ref(),
                                _ => None,
                            });
                            matches!(addr.and_then(|a| a.address.as_ref()), Some(address::Address::SocketAddress(sa)) if &sa.address == w)
                        });
                        if has && s.watched_at.is_none() {
                            s.watched_at = Some(Instant::now());
                        }
                    }
                }
            }
            _ => {}
        }
        if s.complete_at.is_none()
            && s.listeners
            && s.routes
            && !s.eds_clusters.is_empty()
            && s.eds_clusters.is_subset(&s.endpoints_of)
        {
            s.complete_at = Some(Instant::now());
            self.complete.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn wanted(&self, type_url: &str) -> Vec<String> {
        let s = self.seen.lock().unwrap();
        match type_url {
            ENDPOINT => s.eds_clusters.iter().cloned().collect(),
            // Every HTTP port's route config; one port here.
            ROUTE => vec!["80".into()],
            _ => Vec::new(),
        }
    }
}

/// skiffd's CPU seconds (user + system) and RSS / peak RSS in KiB.
fn usage(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf with a constant name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (ticks(11) + ticks(12)) as f64 / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (cpu, kib("VmRSS:"), kib("VmHWM:"))
}

struct Skiffd(Child);

impl Drop for Skiffd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let services = env_num("XDS_SERVICES", 1000);
    let proxies = env_num("XDS_PROXIES", 100);
    let rounds = env_num("XDS_ROUNDS", 5);
    // istiod's default quiet period; the change latency below includes it.
    let debounce = std::env::var("XDS_DEBOUNCE").unwrap_or_else(|_| "100ms".to_owned());
    // istiod's PILOT_ENABLE_EDS_DEBOUNCE: whether endpoint-only pushes wait for the debounce.
    let eds_debounce = std::env::var("XDS_EDS_DEBOUNCE").unwrap_or_else(|_| "true".to_owned());
    let dir = std::env::temp_dir().join(format!("skiff-xds-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_registry(&dir, services, None);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mon = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // `XDS_WRAP="heaptrack -o /tmp/skiffd"` runs skiffd under a profiler (its RSS is then not
    // measured: the pid is the wrapper's).
    let wrap: Vec<String> = std::env::var("XDS_WRAP")
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut command = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(SKIFFD);
            c
        }
        None => Command::new(SKIFFD),
    };
    let mut child = command
        .arg("--config-dir")
        .arg(&dir)
        .args([
            "--xds-addr",
            &format!("127.0.0.1:{port}"),
            "--monitoring-addr",
            &format!("127.0.0.1:{mon}"),
        ])
        // The directory is watched with inotify; the default 500 ms poll is only a safety net.
        .args([
            "--log_output_level",
            &std::env::var("XDS_LOG").unwrap_or_else(|_| "default:warn".into()),
            "--debounce-after",
            &debounce,
            "--eds-debounce",
            &eds_debounce,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start skiffd");
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if std::env::var("XDS_LOG").is_ok() {
                eprintln!("{l}");
            }
        }
    });
    let pid = child.id();
    let _skiffd = Skiffd(child);
    let ready = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(ready.elapsed() < Duration::from_secs(60), "skiffd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let it read the registry before the proxies come.
    std::thread::sleep(Duration::from_millis(500));
    let (cpu_idle, rss_idle, _) = usage(pid);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let complete = Arc::new(AtomicUsize::new(0));
    let bytes_total = Arc::new(AtomicU64::new(0));
    let watch = Arc::new(Mutex::new(None::<String>));
    let mut seens = Vec::new();
    let start = Instant::now();
    for p in 0..proxies {
        let seen = Arc::new(Mutex::new(Seen::default()));
        seens.push(seen.clone());
        let sink = Sink {
            seen,
            watch: watch.clone(),
            complete: complete.clone(),
            bytes_total: bytes_total.clone(),
        };
        let ip = Ipv4Addr::new(198, 18, 250, (p % 250) as u8);
        let client = Client {
            address: format!("127.0.0.1:{port}"),
            node: Node {
                id: format!("sidecar~{ip}~load-{p}.bench~bench.svc.cluster.local"),
                ..Default::default()
            },
            max_backoff: Duration::from_secs(1),
        };
        rt.spawn(client.run(sink));
    }
    while complete.load(Ordering::Relaxed) < proxies {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "only {} of {proxies} proxies complete",
            complete.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let first_full = start.elapsed();
    let (cpu_after_first, rss_first, _) = usage(pid);
    let bytes_per_proxy = seens.iter().map(|s| s.lock().unwrap().bytes).sum::<u64>() / proxies as u64;

    // One endpoint moves; how long until every proxy has it.
    let mut change_ms = Vec::new();
    for round in 0..rounds {
        let new_ip = Ipv4Addr::new(198, 18, 240, round as u8 + 1);
        for s in &seens {
            s.lock().unwrap().watched_at = None;
        }
        *watch.lock().unwrap() = Some(new_ip.to_string());
        let t0 = Instant::now();
        write_registry(&dir, services, Some((1500 % (services * 3), new_ip)));
        loop {
            let done = seens
                .iter()
                .filter(|s| s.lock().unwrap().watched_at.is_some())
                .count();
            if done == proxies {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "endpoint change reached {done} of {proxies}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let last = seens
            .iter()
            .filter_map(|s| s.lock().unwrap().watched_at)
            .max()
            .unwrap();
        change_ms.push(last.duration_since(t0).as_secs_f64() * 1000.0);
    }
    let (cpu_end, rss_end, hwm) = usage(pid);
    // What skiffd holds once pushing has stopped (it returns freed heap pages after a quiet second).
    std::thread::sleep(Duration::from_millis(2500));
    let (_, rss_settled, _) = usage(pid);
    rt.shutdown_timeout(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);

    println!("| metric | value |");
    println!("|---|---|");
    println!("| services × endpoints | {services} × 3 |");
    println!("| connected proxies | {proxies} |");
    println!(
        "| first full push, all proxies | {:.0} ms |",
        first_full.as_secs_f64() * 1000.0
    );
    println!(
        "| one endpoint change → every proxy (median of {rounds}; from writing the file, through inotify and the {debounce} debounce, EDS debounce {eds_debounce}) | {:.1} ms (min {:.1}, max {:.1}) |",
        median(change_ms.clone()),
        change_ms.iter().copied().fold(f64::MAX, f64::min),
        change_ms.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "| config per proxy (protobuf bytes, first push) | {:.1} KiB |",
        bytes_per_proxy as f64 / 1024.0
    );
    println!(
        "| skiffd CPU: registry load / first push / {rounds} changes | {cpu_idle:.2} s / {:.2} s / {:.2} s |",
        cpu_after_first - cpu_idle,
        cpu_end - cpu_after_first
    );
    println!(
        "| skiffd RSS: idle / after first push / end (peak) / settled | {:.1} / {:.1} / {:.1} ({:.1}) / {:.1} MiB |",
        rss_idle as f64 / 1024.0,
        rss_first as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        hwm as f64 / 1024.0,
        rss_settled as f64 / 1024.0
    );
}
