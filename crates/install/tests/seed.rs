//! The generated `istio-sidecar-injector` against the one seed 004 printed (Istio 1.19.3).
//! Seed 004's copy was deactivated (`istio.io/deactivated: never-match`) because a revision tag
//! had taken over; Skiff's carries the chart's live selectors instead, so those are compared
//! with the chart (see `decide::selected_by_webhooks`), everything else with the seed.

#![allow(clippy::unwrap_used)]

use inject::Settings;
use serde_json::Value;

const SEED: &str = include_str!("testdata/seed004-mutatingwebhook.yaml");

#[test]
fn webhooks_match_seed_004_apart_from_selectors_and_service() {
    let seed: Value = serde_yaml_ng::from_str(SEED).unwrap();
    let ours = install::mutating_webhook(&Settings::default(), &install::Options::default());
    assert_eq!(ours["metadata"]["name"], seed["metadata"]["name"]);
    let (ours, seed) = (
        ours["webhooks"].as_array().unwrap(),
        seed["webhooks"].as_array().unwrap(),
    );
    assert_eq!(ours.len(), 4);
    for (o, s) in ours.iter().zip(seed) {
        for key in [
            "name",
            "admissionReviewVersions",
            "failurePolicy",
            "matchPolicy",
            "reinvocationPolicy",
            "rules",
            "sideEffects",
            "timeoutSeconds",
        ] {
            assert_eq!(o[key], s[key], "{}: {key}", s["name"]);
        }
        let (os, ss) = (&o["clientConfig"]["service"], &s["clientConfig"]["service"]);
        assert_eq!(
            (&os["path"], &os["port"], &os["namespace"]),
            (&ss["path"], &ss["port"], &ss["namespace"])
        );
        assert_eq!(os["name"], "skiffd");
        assert_eq!(ss["name"], "istiod");
    }
}
