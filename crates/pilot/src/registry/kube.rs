//! `skiffd --kubernetes`: the same kinds as the config directory, watched on an API server with
//! kube-rs' watcher (list then watch, relist on `410 Gone`, bookmarks, resume after a dropped
//! stream, exponential backoff on errors). Objects are read as JSON and go through the same
//! parsing and validation as manifests, so both sources feed the store identically.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use tokio::sync::mpsc;

use super::{Event, Source};
use crate::model::{parse_value, Key, Object};

/// (group, version, kind, plural) of every watched kind.
pub const KINDS: &[(&str, &str, &str, &str)] = &[
    ("", "v1", "Namespace", "namespaces"),
    ("", "v1", "Service", "services"),
    ("", "v1", "Endpoints", "endpoints"),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    ("", "v1", "Pod", "pods"),
    ("apps", "v1", "Deployment", "deployments"),
    // Certificates for gateways' `credentialName` (only TLS-shaped Secrets are kept).
    ("", "v1", "Secret", "secrets"),
    (
        "networking.istio.io",
        "v1beta1",
        "VirtualService",
        "virtualservices",
    ),
    (
        "networking.istio.io",
        "v1beta1",
        "DestinationRule",
        "destinationrules",
    ),
    ("networking.istio.io", "v1beta1", "Gateway", "gateways"),
    ("networking.istio.io", "v1beta1", "ServiceEntry", "serviceentries"),
    ("networking.istio.io", "v1beta1", "Sidecar", "sidecars"),
];

/// An API server as a registry source.
pub struct KubeSource {
    client: kube::Client,
}

impl KubeSource {
    pub fn new(client: kube::Client) -> KubeSource {
        KubeSource { client }
    }

    /// In-cluster config or `$KUBECONFIG`/`~/.kube/config`, as kubectl finds it.
    pub async fn from_environment() -> Result<KubeSource, kube::Error> {
        Ok(KubeSource::new(kube::Client::try_default().await?))
    }
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// The object as JSON with its type filled in (list items come without `apiVersion`/`kind`).
fn to_object(ar: &ApiResource, obj: &DynamicObject) -> Result<Option<Object>, String> {
    let mut v = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    if let Some(map) = v.as_object_mut() {
        map.insert("apiVersion".into(), ar.api_version.clone().into());
        map.insert("kind".into(), ar.kind.clone().into());
    }
    let origin = format!("watch {}", ar.plural);
    parse_value(&origin, v).map_err(|e| e.to_string())
}

fn key_of(ar: &ApiResource, obj: &DynamicObject) -> Key {
    Key {
        kind: ar.kind.clone(),
        namespace: if ar.kind == "Namespace" {
            String::new()
        } else {
            obj.metadata.namespace.clone().unwrap_or_default()
        },
        name: obj.metadata.name.clone().unwrap_or_default(),
    }
}

/// Whether a watch error means the kind is not served at all (a CRD that is not installed).
fn not_installed(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

/// Watches one kind until `events` closes.
async fn watch_kind(
    client: kube::Client,
    ar: ApiResource,
    events: mpsc::UnboundedSender<Event>,
    pending: Arc<AtomicUsize>,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let origin = format!("watch {}", ar.plural);
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut known: HashSet<Key> = HashSet::new();
    // Objects currently reported as invalid (skipped until a valid version arrives).
    let mut bad: HashSet<Key> = HashSet::new();
    let mut relist: Option<HashSet<Key>> = None;
    let mut synced = false;
    let mut failing = false;
    let mark_synced = |synced: &mut bool| {
        if !*synced {
            *synced = true;
            if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                let _ = events.send(Event::Synced);
            }
        }
    };
    let send = |e: Event| events.send(e).is_ok();
    while let Some(item) = stream.next().await {
        let ev = match item {
            Ok(ev) => ev,
            Err(e) => {
                if not_installed(&e) {
                    // Nothing to watch; keep retrying (with backoff) in case it gets installed.
                    mark_synced(&mut synced);
                    continue;
                }
                failing = true;
                if !send(Event::Problem {
                    origin: origin.clone(),
                    problem: Some(format!("{origin}: {e} (retrying with backoff)")),
                }) {
                    return;
                }
                continue;
            }
        };
        if failing {
            failing = false;
            if !send(Event::Problem {
                origin: origin.clone(),
                problem: None,
            }) {
                return;
            }
        }
        // Returns false when the receiver is gone.
        let apply = |obj: &DynamicObject, known: &mut HashSet<Key>, bad: &mut HashSet<Key>| -> bool {
            let key = key_of(&ar, obj);
            let problem_origin = format!("{} {}/{}", ar.kind, key.namespace, key.name);
            match to_object(&ar, obj) {
                Ok(Some(o)) => {
                    if bad.remove(&key)
                        && !send(Event::Problem {
                            origin: problem_origin,
                            problem: None,
                        })
                    {
                        return false;
                    }
                    let existed = !known.insert(key);
                    let o = Arc::new(o);
                    send(if existed {
                        Event::Updated(o)
                    } else {
                        Event::Added(o)
                    })
                }
                Ok(None) => true,
                Err(e) => {
                    bad.insert(key);
                    send(Event::Problem {
                        origin: problem_origin,
                        problem: Some(e),
                    })
                }
            }
        };
        let ok = match ev {
            watcher::Event::Init => {
                relist = Some(HashSet::new());
                true
            }
            watcher::Event::InitApply(obj) => {
                let ok = apply(&obj, &mut known, &mut bad);
                let key = key_of(&ar, &obj);
                if let (Some(seen), true) = (relist.as_mut(), known.contains(&key)) {
                    seen.insert(key);
                }
                ok
            }
            watcher::Event::InitDone => {
                let mut ok = true;
                if let Some(seen) = relist.take() {
                    // Objects that vanished while we were not watching (the 410 Gone case).
                    for gone in known.difference(&seen) {
                        ok &= send(Event::Deleted(gone.clone()));
                    }
                    known = seen;
                }
                mark_synced(&mut synced);
                ok
            }
            watcher::Event::Apply(obj) => apply(&obj, &mut known, &mut bad),
            watcher::Event::Delete(obj) => {
                let key = key_of(&ar, &obj);
                let cleared = !bad.remove(&key)
                    || send(Event::Problem {
                        origin: format!("{} {}/{}", ar.kind, key.namespace, key.name),
                        problem: None,
                    });
                let was_known = known.remove(&key);
                cleared && (!was_known || send(Event::Deleted(key)))
            }
        };
        if !ok {
            return;
        }
    }
}

impl Source for KubeSource {
    fn start(self: Box<Self>, events: mpsc::UnboundedSender<Event>) {
        let pending = Arc::new(AtomicUsize::new(KINDS.len()));
        for (g, v, k, p) in KINDS {
            tokio::spawn(watch_kind(
                self.client.clone(),
                resource(g, v, k, p),
                events.clone(),
                pending.clone(),
            ));
        }
    }
}
