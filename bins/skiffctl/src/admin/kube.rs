//! Kubernetes: a pod's admin port reached through the API server's port-forward (kube-rs's
//! `Api::<Pod>::portforward`), which is how istioctl reaches Envoy; `deploy/NAME` is resolved to
//! the Deployment's first pod, and `proxy-status` asks every skiffd pod's monitoring port.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{parse_response, request_bytes, response_complete, AdminSource, PodRef};

/// A cluster from the current kubeconfig (or the in-cluster service account).
pub struct Kubernetes {
    client: kube::Client,
    rt: tokio::runtime::Runtime,
    admin_port: u16,
}

/// `k1=v1,k2=v2` from a Deployment's `matchLabels` (sorted, as kubectl prints selectors).
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Which of a Deployment's pods to ask: running and ready first, then by name (kubectl's choice
/// for `logs deploy/NAME` prefers the same).
pub fn first_pod(pods: &[Pod]) -> Option<String> {
    let score = |p: &Pod| {
        let status = p.status.as_ref();
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        (
            !(running && ready),
            !running,
            p.metadata.name.clone().unwrap_or_default(),
        )
    };
    pods.iter()
        .min_by_key(|p| score(p))
        .and_then(|p| p.metadata.name.clone())
}

impl Kubernetes {
    pub fn connect(admin_port: u16) -> Result<Kubernetes> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the Kubernetes client's runtime")?;
        let client = rt
            .block_on(kube::Client::try_default())
            .context("cannot reach Kubernetes: no usable kubeconfig (KUBECONFIG, ~/.kube/config) or in-cluster account")?;
        Ok(Kubernetes {
            client,
            rt,
            admin_port,
        })
    }

    /// The pod's name and namespace (`-n`, else the kubeconfig context's namespace).
    async fn resolve_async(&self, pod: &PodRef) -> Result<(String, String)> {
        let namespace = pod.namespace_or(self.client.default_namespace()).to_owned();
        let Some(deploy) = pod.deployment() else {
            return Ok((pod.pod_name().to_owned(), namespace));
        };
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &namespace);
        let d = deployments
            .get(deploy)
            .await
            .with_context(|| format!("deploy/{deploy} in namespace {namespace}"))?;
        let labels = d
            .spec
            .selector
            .match_labels
            .filter(|l| !l.is_empty())
            .with_context(|| format!("deploy/{deploy} has no matchLabels selector"))?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let list = pods
            .list(&ListParams::default().labels(&selector_string(&labels)))
            .await
            .with_context(|| format!("listing the pods of deploy/{deploy}"))?;
        let name = first_pod(&list.items).with_context(|| format!("no pods match \"deploy/{deploy}\""))?;
        Ok((name, namespace))
    }

    async fn forward(
        &self,
        pod: &str,
        namespace: &str,
        port: u16,
        method: &str,
        path: &str,
    ) -> Result<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let mut pf = pods
            .portforward(pod, &[port])
            .await
            .with_context(|| format!("port-forward to {pod}.{namespace}:{port}"))?;
        let mut stream = pf
            .take_stream(port)
            .with_context(|| format!("no stream for port {port}"))?;
        stream
            .write_all(&request_bytes(method, &format!("localhost:{port}"), path))
            .await?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let read = async {
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
                if response_complete(&raw) {
                    break;
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .with_context(|| format!("{method} {path} on {pod}.{namespace}:{port} timed out"))??;
        drop(stream);
        pf.abort();
        let (status, body) = parse_response(&raw)?;
        if !(200..300).contains(&status) {
            bail!(
                "{method} {path} on {pod}.{namespace}:{port} answered {status}: {}",
                body.trim()
            );
        }
        Ok(body)
    }

    fn admin(&self, pod: &PodRef, method: &str, path: &str) -> Result<String> {
        self.rt.block_on(async {
            let (name, namespace) = self.resolve_async(pod).await?;
            self.forward(&name, &namespace, self.admin_port, method, path)
                .await
                .with_context(|| format!("failed to execute command on {name}.{namespace} sidecar"))
        })
    }

    /// `/debug/syncz` of every skiffd pod (label `app=skiffd`) in `namespace`, with its name.
    pub fn syncz(&self, namespace: &str) -> Result<Vec<(String, String)>> {
        self.rt.block_on(async {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            let list = pods
                .list(&ListParams::default().labels("app=skiffd"))
                .await
                .with_context(|| format!("listing skiffd pods in {namespace}"))?;
            if list.items.is_empty() {
                bail!("no skiffd pods (app=skiffd) in namespace {namespace}");
            }
            let mut out = Vec::new();
            for p in list.items {
                let name = p.metadata.name.unwrap_or_default();
                let body = self
                    .forward(&name, namespace, 15014, "GET", "/debug/syncz")
                    .await?;
                out.push((name, body));
            }
            Ok(out)
        })
    }
}

impl AdminSource for Kubernetes {
    fn get(&self, pod: &PodRef, path: &str) -> Result<String> {
        self.admin(pod, "GET", path)
    }

    fn post(&self, pod: &PodRef, path: &str) -> Result<String> {
        self.admin(pod, "POST", path)
    }

    fn resolve(&self, pod: &PodRef) -> Result<(String, String)> {
        self.rt.block_on(self.resolve_async(pod))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pod(name: &str, phase: &str, ready: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap()
    }

    #[test]
    fn selectors_and_first_pod() {
        let labels = BTreeMap::from([
            ("app".to_owned(), "nginx".to_owned()),
            ("a".to_owned(), "b".to_owned()),
        ]);
        assert_eq!(selector_string(&labels), "a=b,app=nginx");
        let pods = [
            pod("nginx-b", "Running", false),
            pod("nginx-c", "Running", true),
            pod("nginx-a", "Pending", false),
        ];
        assert_eq!(first_pod(&pods).as_deref(), Some("nginx-c"));
        assert_eq!(first_pod(&[]), None);
    }
}
