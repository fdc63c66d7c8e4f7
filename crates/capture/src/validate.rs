//! `--run-validation`: prove that capture works before the app starts, as Istio's
//! `istio-validation` does. A client running as the proxy's uid connects to
//! `127.0.0.6:<probe port>`; the capture rules must send it through ISTIO_IN_REDIRECT to a
//! listener on the inbound (or outbound) capture port, which reads the original destination back.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use crate::config::CaptureConfig;
use crate::original_dst::original_dst;
use crate::ValidationError;

/// Runs the probe in the current network namespace; the calling process must be allowed to
/// switch a thread to `uid` (root).
pub fn run(cfg: &CaptureConfig, probe_port: u16, timeout: Duration) -> Result<(), ValidationError> {
    info!("Starting iptables validation. This check verifies that iptables rules are properly established for the network.");
    let uid = resolve_uid(cfg.proxy_uids.first().map(String::as_str).unwrap_or("1337"))?;
    let gid = resolve_gid(cfg.proxy_gids.first().map(String::as_str).unwrap_or("1337"))?;
    let (listen_ip, probe_ip): (IpAddr, IpAddr) = if cfg.enable_ipv6 && !cfg.dual_stack {
        (
            Ipv6Addr::LOCALHOST.into(),
            "::6".parse::<Ipv6Addr>().unwrap_or(Ipv6Addr::LOCALHOST).into(),
        )
    } else {
        (Ipv4Addr::LOCALHOST.into(), Ipv4Addr::new(127, 0, 0, 6).into())
    };

    let (found_tx, found_rx) = mpsc::channel::<SocketAddr>();
    let mut listening = Vec::new();
    for port in [cfg.proxy_port, cfg.inbound_capture_port] {
        let addr = SocketAddr::new(listen_ip, port);
        match TcpListener::bind(addr) {
            Ok(l) => {
                info!("Listening on {addr}");
                listening.push(addr);
                let tx = found_tx.clone();
                std::thread::spawn(move || serve(l, probe_port, tx));
            }
            Err(e) => debug!(%addr, error = %e, "cannot listen"),
        }
    }
    if listening.is_empty() {
        return Err(ValidationError::NoListener {
            ports: vec![cfg.proxy_port, cfg.inbound_capture_port],
        });
    }

    let target = SocketAddr::new(probe_ip, probe_port);
    let deadline = Instant::now() + timeout;
    loop {
        // Connect as the proxy would: its uid is what sends 127.0.0.6 into ISTIO_IN_REDIRECT.
        let attempt = as_user(uid, gid, move || {
            TcpStream::connect_timeout(&target, Duration::from_millis(500))
        });
        if let Err(e) = &attempt {
            debug!(%target, error = %e, "probe connection failed");
        }
        if let Ok(orig) = found_rx.recv_timeout(Duration::from_millis(300)) {
            info!(original_dst = %orig, "Validation passed, iptables rules established");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ValidationError::Timeout {
                target,
                timeout,
                listening,
            });
        }
    }
}

fn serve(listener: TcpListener, probe_port: u16, found: mpsc::Sender<SocketAddr>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        match original_dst(&conn) {
            Ok(orig) => {
                let _ = conn.write_all(orig.port().to_string().as_bytes());
                if orig.port() == probe_port {
                    let _ = found.send(orig);
                    return;
                }
            }
            Err(e) => debug!(error = %e, "no original destination on probe connection"),
        }
    }
}

fn resolve_uid(s: &str) -> Result<u32, ValidationError> {
    if let Ok(n) = s.parse() {
        return Ok(n);
    }
    nix::unistd::User::from_name(s)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
        .ok_or_else(|| ValidationError::UnknownOwner(s.to_owned()))
}

fn resolve_gid(s: &str) -> Result<u32, ValidationError> {
    if let Ok(n) = s.parse() {
        return Ok(n);
    }
    nix::unistd::Group::from_name(s)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| ValidationError::UnknownOwner(s.to_owned()))
}

/// Runs `f` on a fresh thread whose credentials alone are switched to `uid`/`gid`.
///
/// The raw syscalls change only the calling thread (glibc's wrappers would change every thread of
/// the process), and the thread ends with `f`, so the rest of the process keeps its privileges.
pub fn as_user<T: Send + 'static>(
    uid: u32,
    gid: u32,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    std::thread::spawn(move || {
        // SAFETY: plain syscalls with integer arguments, affecting only this thread.
        unsafe {
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("probe thread panicked"))?
}
