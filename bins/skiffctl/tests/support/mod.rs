//! One local mesh per test, driven through the real `skiffctl`: its own name (tests run
//! concurrently) and state directory, and `down` when the test ends, pass or fail.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub const SKIFFCTL: &str = env!("CARGO_BIN_EXE_skiffctl");

pub struct LocalMesh {
    pub name: String,
    pub dir: PathBuf,
}

impl LocalMesh {
    /// A mesh named `{prefix}{pid}{label}` with its state under a private temporary directory.
    pub fn new(prefix: &str, label: &str) -> LocalMesh {
        let name = format!("{prefix}{}{label}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("skiff-local-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        LocalMesh { name, dir }
    }

    /// `skiffctl ARGS --name MESH`.
    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new(SKIFFCTL)
            .args(args)
            .args(["--name", &self.name])
            .env("SKIFF_LOCAL_DIR", &self.dir)
            .output()
            .expect("run skiffctl")
    }

    /// `skiffctl local …`, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let mut full = vec!["local"];
        full.extend_from_slice(args);
        let out = self.cmd(&full);
        assert!(
            out.status.success(),
            "skiffctl {} failed: {}\n{}\nsupervisor log:\n{}",
            full.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(self.dir.join(&self.name).join("supervisor.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `skiffctl local exec -n NS POD -- CMD`.
    pub fn exec_in(&self, ns: &str, pod: &str, cmd: &[&str]) -> Output {
        // `--name` before `--`: everything after it is the pod's command.
        Command::new(SKIFFCTL)
            .args(["local", "exec", "--name", &self.name, "-n", ns, pod, "--"])
            .args(cmd)
            .env("SKIFF_LOCAL_DIR", &self.dir)
            .output()
            .expect("run skiffctl")
    }

    /// `skiffctl proxy-config|proxy-status … --mesh MESH`, which must succeed; returns stdout.
    pub fn istioctl(&self, args: &[&str]) -> String {
        let out = Command::new(SKIFFCTL)
            .args(args)
            .args(["--mesh", &self.name])
            .env("SKIFF_LOCAL_DIR", &self.dir)
            .output()
            .expect("run skiffctl");
        assert!(
            out.status.success(),
            "skiffctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        let _ = self.cmd(&["local", "down"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
