//! Network-namespace test hosts for Skiff's end-to-end tests.
//!
//! A [`Network`] is a private bridge living in its own namespace (the "switch"), so nothing a test
//! builds touches the host's interfaces or routes. Each [`Pod`] is a namespace joined to the bridge
//! by a veth pair, with an address from 198.18.0.0/16 (optionally 2001:2::/64) and a route for
//! 198.18.0.0/15, so Service VIPs (198.19.x.x) leave through `eth0` like in a cluster. Pods run
//! closures on threads inside their namespace, or processes (optionally as uid/gid 1337).
//! Everything is deleted on drop, also while a test panics; namespaces left behind by a killed
//! test are swept by the next test that starts.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};

/// The proxy's uid and gid in Istio.
pub const PROXY_UID: u32 = 1337;

const PREFIX: &str = "skt";
static SEQ: AtomicU32 = AtomicU32::new(0);

fn run_ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills every process inside namespace `name`, then deletes it.
fn destroy_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// Removes namespaces of test processes that died without cleaning up (SIGKILL, timeout).
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !pid_alive(pid) {
            destroy_netns(&name);
        }
    }
}

struct Shared {
    id: String,
    switch: String,
    ipv6: bool,
    next_host: AtomicU32,
}

impl Drop for Shared {
    fn drop(&mut self) {
        destroy_netns(&self.switch);
    }
}

/// A private L2 network: a bridge in its own namespace, isolated from the host.
pub struct Network {
    shared: Arc<Shared>,
}

impl Network {
    /// Creates a network named after the test (`label` is only used in namespace names).
    pub fn new(label: &str) -> Result<Network> {
        Self::build(label, false)
    }

    /// Like [`Network::new`], and every pod also gets an IPv6 address from 2001:2::/64.
    pub fn with_ipv6(label: &str) -> Result<Network> {
        Self::build(label, true)
    }

    fn build(label: &str, ipv6: bool) -> Result<Network> {
        if !nix::unistd::geteuid().is_root() {
            bail!("network namespace tests need root");
        }
        sweep_stale();
        let label: String = label
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(20)
            .collect();
        let id = format!(
            "{PREFIX}-{}-{}-{label}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{id}-sw");
        run_ip(&["netns", "add", &switch])?;
        let shared = Arc::new(Shared {
            id,
            switch,
            ipv6,
            next_host: AtomicU32::new(0),
        });
        run_ip(&["-n", &shared.switch, "link", "add", "br0", "type", "bridge"])?;
        run_ip(&["-n", &shared.switch, "link", "set", "br0", "up"])?;
        Ok(Network { shared })
    }

    /// Adds a pod: a namespace with `lo` up and `eth0` on the bridge.
    pub fn add_pod(&self, name: &str) -> Result<Pod> {
        let n = self.shared.next_host.fetch_add(1, Ordering::Relaxed);
        let host = n + 10;
        let ip = Ipv4Addr::new(198, 18, (host / 250) as u8, (host % 250) as u8 + 1);
        let ns = format!("{}-{name}", self.shared.id);
        run_ip(&["netns", "add", &ns])?;
        let pod = Pod {
            name: name.to_owned(),
            netns: ns.clone(),
            ip,
            ip6: self
                .shared
                .ipv6
                .then(|| Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, host as u16 + 1)),
            children: Mutex::new(Vec::new()),
            _network: self.shared.clone(),
        };
        let peer = format!("v{n}");
        run_ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            &ns,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &self.shared.switch,
        ])?;
        run_ip(&[
            "-n",
            &self.shared.switch,
            "link",
            "set",
            &peer,
            "master",
            "br0",
            "up",
        ])?;
        run_ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        run_ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        run_ip(&["-n", &ns, "addr", "add", &format!("{ip}/16"), "dev", "eth0"])?;
        // Service VIPs (198.19.0.0/16) are on-link too, as if the node routed them.
        run_ip(&["-n", &ns, "route", "add", "198.19.0.0/16", "dev", "eth0"])?;
        if let Some(ip6) = pod.ip6 {
            run_ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip6}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
        }
        Ok(pod)
    }
}

/// A pod: one network namespace with an address on the test network.
pub struct Pod {
    pub name: String,
    /// The namespace's name under /run/netns.
    pub netns: String,
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
    children: Mutex<Vec<Child>>,
    _network: Arc<Shared>,
}

fn enter_netns(path: &Path) -> std::io::Result<()> {
    let file = File::open(path)?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Switches the calling thread (only) to `uid`/`gid` with raw syscalls.
fn set_thread_creds(uid: u32, gid: u32) -> std::io::Result<()> {
    // SAFETY: integer-argument syscalls affecting only the calling thread.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
            || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
            || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Pod {
    /// `/run/netns/<name>`, for `--network-namespace` and friends.
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }

    /// Runs `f` on a new thread inside this pod and waits for it (a panic in `f` is re-raised).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn_thread(None, f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// Like [`Pod::run`], with the thread's credentials switched to `uid`/`gid` first.
    pub fn run_as<T: Send + 'static>(&self, uid: u32, gid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn_thread(Some((uid, gid)), f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// Starts `f` on a thread inside this pod (optionally as uid/gid) without waiting.
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        creds: Option<(u32, u32)>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.netns_path();
        std::thread::spawn(move || {
            if let Err(e) = enter_netns(&path) {
                panic!("entering {}: {e}", path.display());
            }
            if let Some((uid, gid)) = creds {
                if let Err(e) = set_thread_creds(uid, gid) {
                    panic!("switching to uid {uid}: {e}");
                }
            }
            f()
        })
    }

    /// A command that will run inside this pod.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.command_inner(program, None)
    }

    /// A command that will run inside this pod as `uid`/`gid` (no supplementary groups).
    pub fn command_as(&self, program: impl AsRef<std::ffi::OsStr>, uid: u32, gid: u32) -> Command {
        self.command_inner(program, Some((uid, gid)))
    }

    fn command_inner(&self, program: impl AsRef<std::ffi::OsStr>, creds: Option<(u32, u32)>) -> Command {
        let mut cmd = Command::new(program);
        let file = File::open(self.netns_path());
        // SAFETY: only async-signal-safe syscalls run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let file = file
                    .as_ref()
                    .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                if let Some((uid, gid)) = creds {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs a command in the pod to completion and returns its output (whatever the exit code).
    pub fn output(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program} in pod {}", self.name))
    }

    /// Runs a command in the pod, requires success and returns stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self.output(program, args)?;
        if !out.status.success() {
            bail!(
                "{program} {} in pod {} failed ({}): {}",
                args.join(" "),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a long-running process; it is killed when the pod is dropped.
    pub fn spawn(&self, mut cmd: Command) -> Result<u32> {
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {:?} in pod {}", cmd.get_program(), self.name))?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
        Ok(pid)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let children = std::mem::take(&mut *self.children.lock().unwrap_or_else(|p| p.into_inner()));
        for mut child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        destroy_netns(&self.netns);
    }
}

/// Whether a namespace of this name still exists (for tests of cleanup).
pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Small socket helpers with deadlines, so a broken rule fails a test instead of hanging it.
pub mod net {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    /// Accepts one connection, or `None` after `timeout`.
    pub fn accept_within(listener: &TcpListener, timeout: Duration) -> Option<(TcpStream, SocketAddr)> {
        listener.set_nonblocking(true).ok()?;
        let deadline = Instant::now() + timeout;
        loop {
            match listener.accept() {
                Ok((s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    return Some((s, peer));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return None,
            }
        }
    }

    /// Connects with a timeout, sends `msg`, and reads the reply until EOF.
    pub fn request(addr: SocketAddr, msg: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(msg)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    }
}
pub mod http;
pub mod manifests;
pub mod proxy;
