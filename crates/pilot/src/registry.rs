//! The service registry: sources (a config directory, a Kubernetes API server) emit add, update
//! and delete events for objects; the [`Store`] applies them, says what kind of push a change
//! needs, and builds [`Snapshot`]s.

pub mod dir;
#[cfg(feature = "kubernetes")]
pub mod kube;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::model::{Key, Object};
use crate::snapshot::Snapshot;

/// What a source reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Added(Arc<Object>),
    Updated(Arc<Object>),
    Deleted(Key),
    /// A problem with one input (`origin` = a file, a watch), or `None` once it is fixed.
    Problem {
        origin: String,
        problem: Option<String>,
    },
    /// The first complete listing is done: the mesh may be served.
    Synced,
}

/// A registry source. It runs until the receiver of `events` is dropped.
pub trait Source: Send + 'static {
    fn start(self: Box<Self>, events: mpsc::UnboundedSender<Event>);
}

/// What an applied event means for the proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    None,
    /// Only endpoints of these Services (namespace, name) changed.
    Endpoints(Vec<(String, String)>),
    Full,
}

impl Change {
    pub fn merge(self, other: Change) -> Change {
        match (self, other) {
            (Change::None, o) | (o, Change::None) => o,
            (Change::Endpoints(mut a), Change::Endpoints(b)) => {
                a.extend(b);
                a.sort();
                a.dedup();
                Change::Endpoints(a)
            }
            _ => Change::Full,
        }
    }
}

/// The objects of every source, by key, plus their problems.
#[derive(Debug, Default)]
pub struct Store {
    objects: BTreeMap<Key, Arc<Object>>,
    problems: BTreeMap<String, String>,
    synced: bool,
    snapshot: Arc<Snapshot>,
}

/// Whether only a pod's readiness/IP moved (labels and spec unchanged): then only endpoints of
/// the Services selecting it change, not the pod's own listeners.
fn pod_status_only(old: &Object, new: &Object) -> bool {
    match (old, new) {
        (Object::Pod(a), Object::Pod(b)) => a.metadata.labels == b.metadata.labels && a.spec == b.spec,
        _ => false,
    }
}

impl Store {
    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.clone()
    }

    /// Applies one event. The snapshot is rebuilt by [`Store::rebuild`] after a batch.
    pub fn apply(&mut self, event: Event) -> Change {
        match event {
            Event::Added(o) | Event::Updated(o) => {
                let key = o.key();
                let old = self.objects.insert(key.clone(), o.clone());
                if old.as_deref() == Some(&*o) {
                    return Change::None;
                }
                self.classify(&key, old.as_deref(), Some(&o))
            }
            Event::Deleted(key) => match self.objects.remove(&key) {
                Some(old) => self.classify(&key, Some(&old), None),
                None => Change::None,
            },
            Event::Problem { origin, problem } => {
                match problem {
                    Some(p) => {
                        if self.problems.get(&origin) != Some(&p) {
                            tracing::warn!(origin = %origin, "{p}; its last good state stays in force");
                        }
                        self.problems.insert(origin, p);
                    }
                    None => {
                        if self.problems.remove(&origin).is_some() {
                            tracing::info!(origin = %origin, "fixed");
                        }
                    }
                }
                Change::None
            }
            Event::Synced => {
                self.synced = true;
                Change::Full
            }
        }
    }

    fn classify(&self, key: &Key, old: Option<&Object>, new: Option<&Object>) -> Change {
        let endpoints_only = match key.kind.as_str() {
            "Endpoints" | "EndpointSlice" => true,
            "Pod" => match (old, new) {
                (Some(a), Some(b)) => pod_status_only(a, b),
                _ => false,
            },
            "Deployment" => return Change::None,
            _ => false,
        };
        if !endpoints_only {
            return Change::Full;
        }
        Change::Endpoints(
            self.snapshot
                .services_touched_by(key, old, new)
                .iter()
                .map(|s| (s.namespace.clone(), s.name.clone()))
                .collect(),
        )
    }

    /// Rebuilds the snapshot from the current objects and returns it.
    pub fn rebuild(&mut self) -> Arc<Snapshot> {
        let mut snap = Snapshot::build(self.objects.values().map(|o| &**o));
        // What `istioctl analyze` would say about the applied Istio resources (reported, not
        // enforced, as in Istio).
        let findings: Vec<String> = crate::analyze::analyze_snapshot(&snap)
            .iter()
            .filter(|m| m.level != api::Level::Info)
            .map(|m| m.to_string())
            .collect();
        snap.problems.extend(findings);
        let mut problems: Vec<String> = self.problems.values().cloned().collect();
        for p in &snap.problems {
            if !self.snapshot.problems.contains(p) {
                tracing::warn!("{p}");
            }
        }
        problems.append(&mut snap.problems);
        snap.problems = problems;
        self.snapshot = Arc::new(snap);
        self.snapshot.clone()
    }

    pub fn objects(&self) -> impl Iterator<Item = &Arc<Object>> {
        self.objects.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_manifests;

    fn objs(text: &str) -> Vec<Arc<Object>> {
        parse_manifests(std::path::Path::new("t.yaml"), text)
            .unwrap()
            .into_iter()
            .map(Arc::new)
            .collect()
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\n\
                       spec: {selector: {app: web}, ports: [{name: http, port: 80}]}\n";
    const POD: &str =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: a, labels: {app: web}}\n\
                       status: {podIP: 198.18.0.5}\n";

    #[test]
    fn pod_status_changes_are_endpoint_only_for_the_selecting_service() {
        let mut store = Store::default();
        for o in objs(SVC).into_iter().chain(objs(POD)) {
            store.apply(Event::Added(o));
        }
        assert_eq!(store.apply(Event::Synced), Change::Full);
        let snap = store.rebuild();
        assert_eq!(snap.services[0].endpoints.len(), 1);
        let moved = objs(&POD.replace("198.18.0.5", "198.18.0.6"));
        assert_eq!(
            store.apply(Event::Updated(moved[0].clone())),
            Change::Endpoints(vec![("a".into(), "web".into())])
        );
        let snap = store.rebuild();
        assert_eq!(snap.services[0].endpoints[0].ip.to_string(), "198.18.0.6");
        let relabelled = objs(&POD.replace("app: web}", "app: web, v: '2'}"));
        assert_eq!(store.apply(Event::Updated(relabelled[0].clone())), Change::Full);
    }

    #[test]
    fn endpoints_without_a_service_are_reported() {
        let mut store = Store::default();
        let e = objs(
            "apiVersion: v1\nkind: Endpoints\nmetadata: {name: ghost, namespace: a}\n\
                      subsets: [{addresses: [{ip: 198.18.0.9}], ports: [{port: 80}]}]\n",
        );
        store.apply(Event::Added(e[0].clone()));
        let snap = store.rebuild();
        assert_eq!(
            snap.problems,
            vec!["Endpoints a/ghost: no Service a/ghost; its addresses are not used".to_string()]
        );
    }
}
