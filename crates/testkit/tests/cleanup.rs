//! The kit cleans up after itself, also when the test using it panics.

#![allow(clippy::unwrap_used)]

use testkit::{netns_exists, Network};

#[test]
fn namespaces_are_deleted_when_a_test_panics() {
    let names = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = names.clone();
    let result = std::panic::catch_unwind(move || {
        let net = Network::new("panics").unwrap();
        let a = net.add_pod("a").unwrap();
        let b = net.add_pod("b").unwrap();
        seen.lock().unwrap().extend([a.netns.clone(), b.netns.clone()]);
        // A process inside the pod must be killed too.
        let mut sleep = a.command("sleep");
        sleep.arg("600");
        a.spawn(sleep).unwrap();
        assert!(netns_exists(&a.netns));
        panic!("test failure inside the pods");
    });
    assert!(result.is_err());
    let names = names.lock().unwrap();
    assert_eq!(names.len(), 2);
    for n in names.iter() {
        assert!(!netns_exists(n), "{n} survived the panic");
    }
}

#[test]
fn pods_reach_each_other_and_nothing_else() {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;
    let net = Network::new("reach").unwrap();
    let a = net.add_pod("a").unwrap();
    let b = net.add_pod("b").unwrap();
    let l = b.run(|| TcpListener::bind("0.0.0.0:7000").unwrap());
    let target = SocketAddr::new(b.ip.into(), 7000);
    a.run(move || TcpStream::connect_timeout(&target, Duration::from_secs(3)))
        .unwrap();
    let (_, peer) = testkit::net::accept_within(&l, Duration::from_secs(3)).unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(a.ip));
    // No default route: the host's network is unreachable from a pod.
    let routes = a.exec("ip", &["route", "show"]).unwrap();
    assert!(!routes.contains("default"), "{routes}");
    let outside: SocketAddr = "192.0.2.1:80".parse().unwrap();
    let err = a
        .run(move || TcpStream::connect_timeout(&outside, Duration::from_secs(1)))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_enetunreach()), "{err}");
}

fn libc_enetunreach() -> i32 {
    101 // ENETUNREACH on Linux
}
