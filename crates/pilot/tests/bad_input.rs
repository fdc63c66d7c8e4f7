//! Bad input in the config directory: a malformed YAML, an unknown kind, a Service with a
//! duplicate port, an Endpoints without a Service; Istio resources that fail Istio's validation
//! (unknown field, bad regex, zero weights, bad fault status, a wildcard mesh host, duplicate TLS
//! hosts in a Gateway) and ones that validate but point nowhere. Each gets a clear error naming
//! the file, document, object and field (and IST code); a refused resource's last good version
//! stays in force and the rest of the mesh is still generated.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use pilot::gen::{self, Context, MeshConfig};
use pilot::proxy::Proxy;
use pilot::registry::dir::ConfigDir;
use pilot::registry::{Event, Store};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pilot-bad-input-{name}-{}", std::process::id()));
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
    let d = scratch("kube");
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

const CANARY_VS: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: canary, namespace: canary}
spec:
  hosts: [canary]
  http:
    - match:
        - headers:
            user: {exact: zhongmingmao}
      route:
        - destination: {host: canary, subset: v2}
    - route:
        - destination: {host: canary, subset: v1}
";

const GATEWAY: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: web, namespace: canary}
spec:
  selector: {istio: ingressgateway}
  servers:
    - hosts: [a.example.com]
      port: {name: https-a, number: 443, protocol: HTTPS}
      tls: {mode: SIMPLE, credentialName: a}
";

/// The first route's cluster of the canary virtual host, as a toolbox in `canary` gets it.
fn canary_first_cluster(store: &Store) -> String {
    let snap = store.snapshot();
    let mesh = MeshConfig::default();
    let proxy = Proxy::sidecar("10.244.0.7".parse().unwrap(), "toolbox-97948fc8-ptlct", "canary");
    let ctx = Context::new(&snap, &proxy, &mesh);
    let routes = gen::route::routes(&ctx, &["80".into()]);
    let vh = routes[0]
        .virtual_hosts
        .iter()
        .find(|v| v.name == "canary.canary.svc.cluster.local:80")
        .unwrap();
    format!("{:?}", vh.routes[0].action)
        .split("Cluster(\"")
        .nth(1)
        .unwrap_or_default()
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn bad_istio_resources_are_refused_and_their_last_good_version_stays() {
    let d = scratch("istio");
    let canary = include_str!("testdata/canary/canary.yaml");
    let rest: Vec<&str> = canary
        .split("\n---\n")
        .filter(|doc| !doc.contains("kind: VirtualService"))
        .collect();
    std::fs::write(d.join("canary.yaml"), rest.join("\n---\n")).unwrap();
    std::fs::write(d.join("vs.yaml"), CANARY_VS).unwrap();
    std::fs::write(d.join("gw.yaml"), GATEWAY).unwrap();
    let mut src = ConfigDir::new(&d, Duration::from_millis(10));
    let mut store = Store::default();
    sync(&mut src, &mut store);
    store.rebuild();
    let good = "outbound|80|v2|canary.canary.svc.cluster.local";
    assert_eq!(canary_first_cluster(&store), good);

    // Each bad version is refused with the file, object, field and IST code; the last good
    // VirtualService keeps routing.
    let cases: &[(&str, &str, &str)] = &[
        (
            "subset: v2}",
            "subsett: v2}",
            "vs.yaml: document 0 (VirtualService canary/canary): spec.http[0].route[0].destination.subsett: unknown field `subsett`",
        ),
        (
            "user: {exact: zhongmingmao}",
            "user: {regex: 'zhong(mingmao'}",
            "spec.http[0].match[0].headers.user.regex: \"zhong(mingmao\" is not a valid RE2 regex",
        ),
        (
            "        - destination: {host: canary, subset: v1}\n",
            "        - destination: {host: canary, subset: v1}\n          weight: 0\n        - destination: {host: canary, subset: v2}\n          weight: 0\n",
            "spec.http[1].route: total destination weight = 0 [IST0106]",
        ),
        (
            "      route:\n        - destination: {host: canary, subset: v2}\n",
            "      route:\n        - destination: {host: canary, subset: v2}\n      fault: {abort: {httpStatus: 700}}\n",
            "spec.http[0].fault.abort.httpStatus: HTTP status 700 is not in range 200-599 [IST0106]",
        ),
        ("hosts: [canary]", "hosts: ['*']", "spec.hosts[0]: wildcard host * is not allowed"),
    ];
    for (from, to, expected) in cases {
        std::thread::sleep(Duration::from_millis(15));
        std::fs::write(d.join("vs.yaml"), CANARY_VS.replace(from, to)).unwrap();
        sync(&mut src, &mut store);
        let snap = store.rebuild();
        let problems = snap.problems.join("\n");
        assert!(problems.contains(expected), "missing {expected:?} in\n{problems}");
        assert_eq!(
            canary_first_cluster(&store),
            good,
            "last good VirtualService in force ({expected})"
        );
    }

    // A Gateway with two TLS servers for one host on one port: refused.
    std::fs::write(
        d.join("gw.yaml"),
        format!(
            "{GATEWAY}    - hosts: [a.example.com]\n      port: {{name: https-b, number: 443, protocol: HTTPS}}\n      tls: {{mode: SIMPLE, credentialName: b}}\n"
        ),
    )
    .unwrap();
    std::fs::write(d.join("vs.yaml"), CANARY_VS).unwrap();
    sync(&mut src, &mut store);
    let snap = store.rebuild();
    let problems = snap.problems.join("\n");
    assert!(
        problems.contains("gw.yaml: document 0 (Gateway canary/web): spec.servers[1].hosts: duplicate host names [a.example.com] on port 443"),
        "{problems}"
    );
    assert_eq!(
        snap.config.gateways[0].spec.servers.len(),
        1,
        "the last good Gateway stays"
    );

    // Valid but wrong references are reported (as istioctl analyze) and applied (as Istio does).
    std::thread::sleep(Duration::from_millis(15));
    std::fs::write(d.join("vs.yaml"), CANARY_VS.replace("subset: v2", "subset: v3")).unwrap();
    sync(&mut src, &mut store);
    let snap = store.rebuild();
    let problems = snap.problems.join("\n");
    assert!(
        problems.contains(
            "Error [IST0101] (VirtualService canary/canary) Referenced host+subset in destinationrule not found: \"canary.canary.svc.cluster.local+v3\""
        ),
        "{problems}"
    );
    assert_eq!(
        canary_first_cluster(&store),
        "outbound|80|v3|canary.canary.svc.cluster.local"
    );
    // Weights that do not add up to 100: a warning; the route applies.
    std::thread::sleep(Duration::from_millis(15));
    std::fs::write(
        d.join("vs.yaml"),
        CANARY_VS.replace(
            "        - destination: {host: canary, subset: v2}\n",
            "        - destination: {host: canary, subset: v2}\n          weight: 90\n        - destination: {host: canary, subset: v1}\n          weight: 20\n",
        ),
    )
    .unwrap();
    sync(&mut src, &mut store);
    let snap = store.rebuild();
    let problems = snap.problems.join("\n");
    assert!(
        problems.contains("Warning [IST0133] (VirtualService canary/canary) Schema validation warning: spec.http[0].route: total destination weight 110 != 100"),
        "{problems}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
