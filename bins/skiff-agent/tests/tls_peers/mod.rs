//! TLS peers for the HTTPS tests, none of them Skiff's code: certificates made with the openssl
//! CLI (a CA and leaves with a DNS SAN), curl and `openssl s_client` as clients.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A scratch directory with a test CA and leaf certificates; removed on drop.
pub struct Certs {
    pub dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI is required");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    /// A CA and one leaf per host (`HOST.pem`, `HOST.key`), P-256 keys.
    pub fn generate(hosts: &[&str]) -> Certs {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "skiff-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=skiff-test-ca",
            ],
        );
        let certs = Certs { dir };
        for h in hosts {
            certs.issue(h, h);
        }
        certs
    }

    /// Issues a new leaf for `host` into `FILE.pem`/`FILE.key` (a rotation writes a new file).
    pub fn issue(&self, host: &str, file: &str) {
        let ext = format!("{file}.ext");
        std::fs::write(self.dir.join(&ext), format!("subjectAltName=DNS:{host}\n")).unwrap();
        let (key, csr, pem) = (
            format!("{file}.key"),
            format!("{file}.csr"),
            format!("{file}.pem"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={host}/O={file}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn cert(&self, file: &str) -> PathBuf {
        self.dir.join(format!("{file}.pem"))
    }

    pub fn key(&self, file: &str) -> PathBuf {
        self.dir.join(format!("{file}.key"))
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `curl https://HOST:PORT/` resolved to 127.0.0.1, trusting the test CA: Ok((http_version,
/// body)) or Err(curl's stderr).
pub fn curl(port: u16, host: &str, certs: &Certs, extra: &[&str]) -> Result<(String, String), String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(certs.ca())
        .args(extra)
        .args(["-w", "\n%{http_version}"])
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("curl is required");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap_or((&text, ""));
    Ok((version.to_owned(), body.to_owned()))
}

/// The `subject=` line of the certificate served for `sni` (`openssl s_client -servername`).
pub fn s_client_subject(port: u16, sni: &str) -> String {
    s_client_subject_with(port, sni, &[])
}

pub fn s_client_subject_with(port: u16, sni: &str, extra: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", sni])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("openssl CLI is required");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("subject="))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("no certificate: {}", String::from_utf8_lossy(&out.stderr)))
}
