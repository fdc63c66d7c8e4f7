//! Bad input in the config directory: a malformed YAML, an unknown kind, a Service with a
//! duplicate port, an Endpoints without a Service. Each gets a clear error naming the file,
//! document, object and field; the rest of the mesh is still generated.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use pilot::gen::{self, Context, MeshConfig};
use pilot::proxy::Proxy;
use pilot::registry::dir::ConfigDir;
use pilot::registry::{Event, Store};

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("pilot-bad-input-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const GOOD: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.20
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
status: {podIP: 198.18.0.20}
";

fn sync(src: &mut ConfigDir, store: &mut Store) {
    for e in src.scan() {
        store.apply(e);
    }
    store.apply(Event::Synced);
}

#[test]
fn each_bad_input_is_named_and_the_rest_keeps_working() {
    let d = scratch();
    std::fs::write(d.join("good.yaml"), GOOD).unwrap();
    std::fs::write(
        d.join("malformed.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: x\n",
    )
    .unwrap();
    std::fs::write(
        d.join("unknown.yaml"),
        "apiVersion: example.com/v1\nkind: Frobnicator\nmetadata: {name: f, namespace: shop}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("dup.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\n\
         spec: {ports: [{name: http, port: 80}, {name: grpc, port: 80}]}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("orphan.yaml"),
        "apiVersion: v1\nkind: Endpoints\nmetadata: {name: ghost, namespace: shop}\n\
         subsets: [{addresses: [{ip: 198.18.0.99}], ports: [{name: http, port: 80}]}]\n",
    )
    .unwrap();
    let mut src = ConfigDir::new(&d, Duration::from_millis(10));
    let mut store = Store::default();
    sync(&mut src, &mut store);
    let snap = store.rebuild();
    let problems = snap.problems.join("\n");
    for expected in [
        "malformed.yaml: document 0: invalid YAML:",
        "unknown.yaml: document 0 (Frobnicator shop/f): kind: unknown kind \"Frobnicator\" (apiVersion example.com/v1",
        "dup.yaml: document 0 (Service shop/cart): spec.ports[1].port: duplicate port 80/TCP (also spec.ports[0])",
        "Endpoints shop/ghost: no Service shop/ghost; its addresses are not used",
    ] {
        assert!(problems.contains(expected), "missing {expected:?} in\n{problems}");
    }
    assert_eq!(snap.problems.len(), 4, "{problems}");

    // The good Service is served, with its endpoint on the target port.
    assert_eq!(snap.services.len(), 1);
    let mesh = MeshConfig::default();
    let proxy = Proxy::sidecar("198.18.0.21".parse().unwrap(), "client", "shop");
    let ctx = Context::new(&snap, &proxy, &mesh);
    let routes = gen::route::routes(&ctx, &["80".into()]);
    assert_eq!(routes[0].virtual_hosts[0].name, "web.shop.svc.cluster.local:80");
    let eps = gen::endpoint::endpoints(&ctx, &[]);
    let text = format!("{eps:?}");
    assert!(
        text.contains("198.18.0.20") && text.contains("PortValue(8080)"),
        "{text}"
    );
    assert!(!text.contains("198.18.0.99"), "orphan endpoints are not used");

    // Fixing a file clears its problem and brings its objects in.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(
        d.join("dup.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\n\
         spec: {ports: [{name: http, port: 80}, {name: grpc, port: 81}]}\n",
    )
    .unwrap();
    sync(&mut src, &mut store);
    let snap = store.rebuild();
    assert_eq!(snap.problems.len(), 3, "{:?}", snap.problems);
    assert_eq!(snap.services.len(), 2);
    let _ = std::fs::remove_dir_all(&d);
}
