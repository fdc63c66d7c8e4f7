//! `skiff-agent proxy`: run the proxy from an Envoy bootstrap file, with Envoy's command-line
//! flags where they mean the same thing.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tracing::error;

use crate::server::{self, Options};

#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Envoy bootstrap (YAML, JSON, or binary `.pb`).
    #[arg(short = 'c', long = "config", visible_alias = "config-path", required = true)]
    pub config: Option<PathBuf>,
    /// Worker threads (default: the CPUs this process may use).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Drain period on SIGTERM, in seconds.
    #[arg(long = "drain-time-s", default_value_t = 5)]
    pub drain_time_s: u64,
    /// Admin address, overriding the bootstrap's (`127.0.0.1:15000`).
    #[arg(long = "admin-address")]
    pub admin_address: Option<std::net::SocketAddr>,
    /// How often access log lines are written, in milliseconds.
    #[arg(long = "file-flush-interval-msec", default_value_t = 1000)]
    pub file_flush_interval_msec: u64,
    /// Run as this uid/gid after binding (the sidecar runs as 1337).
    #[arg(long)]
    pub uid: Option<u32>,
    #[arg(long)]
    pub gid: Option<u32>,
    /// Envoy's log level flag (`-l debug`); `--log_output_level` works too.
    #[arg(short = 'l', long = "log-level")]
    pub log_level: Option<String>,
}

/// Runs the proxy; returns the process exit code.
pub fn run(args: &ProxyArgs) -> u8 {
    if let Some(level) = &args.log_level {
        let _ = telemetry::set_levels(level);
    }
    crate::access_log::set_flush_interval(Duration::from_millis(args.file_flush_interval_msec));
    let Some(config) = &args.config else {
        error!("no bootstrap: pass -c FILE, or run `proxy sidecar` to take configuration over xDS");
        return 2;
    };
    let loaded = match crate::bootstrap::load(config) {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return 1;
        }
    };
    if let Err(e) = drop_privileges(args.uid, args.gid) {
        error!("{e}");
        return 1;
    }
    let opts = Options {
        concurrency: args.concurrency.unwrap_or_else(|| Options::default().concurrency),
        drain_time: Duration::from_secs(args.drain_time_s),
        admin: args.admin_address,
        config_path: Some(config.clone()),
        ..Options::default()
    };
    match server::run(loaded, opts, None) {
        Ok(()) => 0,
        Err(e) => {
            error!("{e}");
            1
        }
    }
}

/// Switches the whole process to `uid`/`gid`. glibc's `setuid`/`setgid` apply to every thread,
/// so this may run after the workers have bound their listeners (as the sidecar does).
pub fn drop_privileges(uid: Option<u32>, gid: Option<u32>) -> Result<(), String> {
    if let Some(g) = gid.or(uid) {
        nix_like::setgid(g).map_err(|e| format!("cannot switch to gid {g}: {e}"))?;
    }
    if let Some(u) = uid {
        nix_like::setuid(u).map_err(|e| format!("cannot switch to uid {u}: {e}"))?;
    }
    Ok(())
}

mod nix_like {
    pub fn setgid(g: u32) -> std::io::Result<()> {
        // SAFETY: plain libc calls with no pointers but the null group list.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setgid(g) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
    pub fn setuid(u: u32) -> std::io::Result<()> {
        // SAFETY: as above.
        unsafe {
            if libc::setuid(u) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}
