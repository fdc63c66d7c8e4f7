//! The admission side of injection, without I/O: an AdmissionReview (v1 or v1beta1) in, the
//! AdmissionReview response out. `server` puts this behind HTTPS.
//!
//! As in Istio, a pod that cannot be injected because of its own content (a bad annotation, a
//! container squatting on `istio-proxy`) is denied with a message naming the field, so the user
//! sees it in `kubectl apply`/ReplicaSet events; a failure of Skiff's own is not the user's fault,
//! so the pod is admitted uninjected with a warning rather than blocking the deploy.

use std::panic::{catch_unwind, AssertUnwindSafe};

use base64::Engine;
use serde_json::{json, Value};

use crate::patch::diff;
use crate::pod::{inject, Outcome, Target};
use crate::settings::Settings;

/// The API versions of `admission.k8s.io` Istio's webhook accepts.
pub const API_VERSIONS: [&str; 2] = ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"];

/// A request that is not an AdmissionReview at all (HTTP 400, as Istio answers).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("request body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("apiVersion {0:?} is not an AdmissionReview version this webhook serves (admission.k8s.io/v1, admission.k8s.io/v1beta1)")]
    Version(String),
    #[error("kind {0:?} is not AdmissionReview")]
    Kind(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
}

/// Handles one AdmissionReview body and returns the response body.
pub fn review(body: &[u8], settings: &Settings) -> Result<Value, ReviewError> {
    let review: Value = serde_json::from_slice(body)?;
    let api_version = review["apiVersion"].as_str().unwrap_or_default().to_string();
    if !API_VERSIONS.contains(&api_version.as_str()) {
        return Err(ReviewError::Version(api_version));
    }
    let kind = review["kind"].as_str().unwrap_or_default();
    if kind != "AdmissionReview" {
        return Err(ReviewError::Kind(kind.to_string()));
    }
    let request = review
        .get("request")
        .filter(|r| r.is_object())
        .ok_or(ReviewError::NoRequest)?;
    let uid = request
        .get("uid")
        .cloned()
        .unwrap_or(Value::String(String::new()));
    let response = respond(request, settings);
    let mut response = response;
    response["uid"] = uid;
    Ok(json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "response": response,
    }))
}

fn deny(message: String) -> Value {
    json!({"allowed": false, "status": {"code": 400, "reason": "BadRequest", "message": message}})
}

fn respond(request: &Value, settings: &Settings) -> Value {
    respond_with(request, settings, inject)
}

type Injector = fn(&Value, &Target, &Settings) -> Result<Outcome, crate::Error>;

fn respond_with(request: &Value, settings: &Settings, inject: Injector) -> Value {
    let namespace = request["namespace"].as_str().unwrap_or_default();
    let Some(pod) = request.get("object").filter(|o| o.is_object()) else {
        return deny("AdmissionReview request has no object (expected the Pod being created)".into());
    };
    if let Some(kind) = pod.get("kind").and_then(Value::as_str) {
        if kind != "Pod" {
            // Only pods are injected; the webhook rules never send anything else.
            return json!({"allowed": true});
        }
    }
    // Managed fields can be huge and never change the result (Istio drops them too).
    let mut pod = pod.clone();
    if let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    let target = Target::from_admitted_pod(&pod, namespace);
    let object = target.object();
    let result = catch_unwind(AssertUnwindSafe(|| inject(&pod, &target, settings)));
    match result {
        Ok(Ok(Outcome::Injected(injected))) => {
            let ops = Value::Array(diff(&pod, &injected));
            tracing::info!(pod = %object, "sidecar injected");
            let patch = base64::engine::general_purpose::STANDARD.encode(ops.to_string());
            json!({"allowed": true, "patchType": "JSONPatch", "patch": patch})
        }
        Ok(Ok(Outcome::Skipped(reason))) => {
            tracing::info!(pod = %object, %reason, "skipping injection");
            json!({"allowed": true})
        }
        Ok(Err(e)) => {
            let message = format!("sidecar injection failed: {e}");
            tracing::warn!(pod = %object, error = %e, "injection denied");
            deny(message)
        }
        Err(_) => {
            tracing::error!(pod = %object, "injection panicked; admitting the pod without a sidecar");
            json!({"allowed": true, "warnings": [
                format!("Skiff could not inject a sidecar into {object} (internal error, see skiffd logs); the pod runs without one")
            ]})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review_for(pod: Value, version: &str) -> Vec<u8> {
        json!({"apiVersion": version, "kind": "AdmissionReview",
            "request": {"uid": "u-1", "namespace": "ns", "object": pod}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn both_versions_answer_with_a_patch() {
        for v in API_VERSIONS {
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "x"}]}});
            let out = review(&review_for(pod, v), &Settings::default()).unwrap();
            assert_eq!(out["apiVersion"], v);
            assert_eq!(out["response"]["uid"], "u-1");
            assert_eq!(out["response"]["allowed"], true);
            assert_eq!(out["response"]["patchType"], "JSONPatch");
        }
    }

    #[test]
    fn an_injected_pod_is_admitted_unchanged() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "x"}]}});
        let out = review(&review_for(pod.clone(), API_VERSIONS[0]), &Settings::default()).unwrap();
        let ops: Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(out["response"]["patch"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        let mut injected = pod;
        crate::patch::apply(&mut injected, ops.as_array().unwrap()).unwrap();
        let again = review(&review_for(injected, API_VERSIONS[0]), &Settings::default()).unwrap();
        assert_eq!(again["response"], json!({"allowed": true, "uid": "u-1"}));
    }

    #[test]
    fn bad_input_is_denied_with_the_field() {
        let pod = json!({"metadata": {"generateName": "web-", "annotations": {
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/40"}},
            "spec": {"containers": [{"name": "app"}]}});
        let out = review(&review_for(pod, API_VERSIONS[0]), &Settings::default()).unwrap();
        let r = &out["response"];
        assert_eq!(r["allowed"], false);
        let msg = r["status"]["message"].as_str().unwrap();
        assert!(msg.contains("Pod ns/web-*"), "{msg}");
        assert!(msg.contains("excludeOutboundIPRanges"), "{msg}");
    }

    #[test]
    fn internal_errors_admit_the_pod_with_a_warning() {
        let request = json!({"namespace": "ns", "object": {"metadata": {"name": "p"}, "spec": {}}});
        let response = respond_with(&request, &Settings::default(), |_, _, _| panic!("bug"));
        assert_eq!(response["allowed"], true);
        let warning = response["warnings"][0].as_str().unwrap();
        assert!(
            warning.starts_with("Skiff could not inject a sidecar into Pod ns/p (internal error"),
            "{warning}"
        );
        assert!(response.get("patch").is_none());
    }

    #[test]
    fn not_a_review() {
        assert!(matches!(
            review(b"{", &Settings::default()),
            Err(ReviewError::Json(_))
        ));
        assert!(matches!(
            review(
                br#"{"apiVersion":"v1","kind":"AdmissionReview"}"#,
                &Settings::default()
            ),
            Err(ReviewError::Version(_))
        ));
    }
}
