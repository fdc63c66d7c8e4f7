//! Running the iptables and iproute2 tools, optionally inside another network namespace.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::ApplyError;

/// Runs commands in this process's network namespace or in the one at `netns`.
#[derive(Debug, Default)]
pub struct Exec {
    netns: Option<(PathBuf, File)>,
}

/// A finished command: exit success, stdout and stderr as text.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Exec {
    /// Commands run here.
    pub fn here() -> Exec {
        Exec { netns: None }
    }

    /// Commands run inside the network namespace at `path` (e.g. `/run/netns/pod`).
    pub fn in_netns(path: &Path) -> Result<Exec, ApplyError> {
        let file = File::open(path).map_err(|e| ApplyError::Netns {
            path: path.to_owned(),
            source: e,
        })?;
        Ok(Exec {
            netns: Some((path.to_owned(), file)),
        })
    }

    pub fn netns_path(&self) -> Option<&Path> {
        self.netns.as_ref().map(|(p, _)| p.as_path())
    }

    fn command(&self, program: &str, args: &[String]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((_, file)) = &self.netns {
            let fd = file.as_fd().try_clone_to_owned();
            if let Ok(fd) = fd {
                // SAFETY: setns is async-signal-safe; the fd stays open until exec.
                unsafe {
                    cmd.pre_exec(move || {
                        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(std::io::Error::from)
                    });
                }
            }
        }
        cmd
    }

    /// Runs `program args…`, feeding `stdin` if given. Fails only if the program cannot start.
    pub fn run(&self, program: &str, args: &[String], stdin: Option<&str>) -> Result<Output, ApplyError> {
        let mut cmd = self.command(program, args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().map_err(|e| ApplyError::Spawn {
            program: program.into(),
            source: e,
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A broken pipe shows up as the program's own failure below.
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| ApplyError::Spawn {
            program: program.into(),
            source: e,
        })?;
        Ok(Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs and requires success; the error carries the command line and stderr.
    pub fn run_ok(&self, program: &str, args: &[String], stdin: Option<&str>) -> Result<String, ApplyError> {
        let out = self.run(program, args, stdin)?;
        if out.success {
            Ok(out.stdout)
        } else {
            Err(ApplyError::Command {
                command: format!("{program} {}", args.join(" ")),
                stderr: out.stderr.trim().to_owned(),
            })
        }
    }
}

/// Runs `f` on a new thread that first enters the network namespace at `path`; threads and
/// sockets `f` creates live in that namespace too.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApplyError> {
    let file = File::open(path).map_err(|e| ApplyError::Netns {
        path: path.to_owned(),
        source: e,
    })?;
    let path = path.to_owned();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| ApplyError::Netns {
            path,
            source: e.into(),
        })?;
        Ok(f())
    })
    .join()
    .map_err(|_| ApplyError::Panicked)?
}
