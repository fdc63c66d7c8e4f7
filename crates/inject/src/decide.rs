//! Whether a pod gets a sidecar, decided as Istio decides it.
//!
//! Two layers, as in Istio: the MutatingWebhookConfiguration's namespace/object selectors pick
//! which pods reach the webhook at all (emulated by [`selected_by_webhooks`] when the namespace's
//! labels are known, e.g. for the local mesh), then the injector's own policy check
//! (`injectRequired`): host network, system namespaces, `sidecar.istio.io/inject`.

use std::collections::BTreeMap;
use std::fmt;

use crate::annotations::{INJECT, REV, STATUS};

/// Namespaces Istio never injects into (`IgnoredNamespaces`).
pub const IGNORED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// Namespace label that turns injection on for the default revision.
pub const NAMESPACE_INJECTION_LABEL: &str = "istio-injection";

/// Why a pod is left alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// It carries `sidecar.istio.io/status`: injected before (injection is idempotent).
    AlreadyInjected,
    /// `hostNetwork: true`: capture rules would rewrite the node's routing.
    HostNetwork,
    IgnoredNamespace(String),
    /// `sidecar.istio.io/inject` (label, or annotation) says no.
    Disabled {
        by: &'static str,
        value: String,
    },
    /// None of the four webhooks' selectors match the namespace and pod labels.
    NotSelected,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::AlreadyInjected => write!(f, "is already injected ({STATUS} is set)"),
            Skip::HostNetwork => f.write_str("has host networking enabled"),
            Skip::IgnoredNamespace(ns) => write!(f, "is in namespace {ns}, which is never injected"),
            Skip::Disabled { by, value } => {
                write!(f, "has sidecar injection disabled ({by} {INJECT}={value:?})")
            }
            Skip::NotSelected => write!(
                f,
                "is not selected for injection by its namespace labels ({NAMESPACE_INJECTION_LABEL}, {REV}) or its own"
            ),
        }
    }
}

type Labels = BTreeMap<String, String>;

/// The four webhooks of Istio's `istio-sidecar-injector` (seed 004), as label selectors.
/// `revision` is the control plane's (`default` for the default revision).
pub fn selected_by_webhooks(ns_labels: &Labels, pod_labels: &Labels, revision: &str) -> bool {
    let ns = |k: &str| ns_labels.get(k).map(String::as_str);
    let pod = |k: &str| pod_labels.get(k).map(String::as_str);
    let not_disabled = pod(INJECT) != Some("false");
    // rev.namespace.sidecar-injector.istio.io
    let rev_namespace = ns(REV) == Some(revision) && ns(NAMESPACE_INJECTION_LABEL).is_none() && not_disabled;
    // rev.object.sidecar-injector.istio.io
    let rev_object = ns(REV).is_none()
        && ns(NAMESPACE_INJECTION_LABEL).is_none()
        && not_disabled
        && pod(REV) == Some(revision);
    if revision != "default" {
        return rev_namespace || rev_object;
    }
    // namespace.sidecar-injector.istio.io
    let namespace = ns(NAMESPACE_INJECTION_LABEL) == Some("enabled") && not_disabled;
    // object.sidecar-injector.istio.io
    let object = ns(NAMESPACE_INJECTION_LABEL).is_none()
        && ns(REV).is_none()
        && pod(INJECT) == Some("true")
        && pod(REV).is_none();
    rev_namespace || rev_object || namespace || object
}

/// Istio's `injectRequired` with the `enabled` policy, plus the already-injected check and,
/// when the namespace labels are known, the webhook selectors.
pub fn decide(
    pod_labels: &Labels,
    pod_annotations: &Labels,
    host_network: bool,
    namespace: &str,
    ns_labels: Option<&Labels>,
    revision: &str,
) -> Result<(), Skip> {
    if pod_annotations.contains_key(STATUS) {
        return Err(Skip::AlreadyInjected);
    }
    if let Some(ns_labels) = ns_labels {
        if !selected_by_webhooks(ns_labels, pod_labels, revision) {
            return Err(Skip::NotSelected);
        }
    }
    if host_network {
        return Err(Skip::HostNetwork);
    }
    if IGNORED_NAMESPACES.contains(&namespace) {
        return Err(Skip::IgnoredNamespace(namespace.to_string()));
    }
    // The label is the newer API and wins over the annotation.
    let (by, value) = match (pod_labels.get(INJECT), pod_annotations.get(INJECT)) {
        (Some(v), _) => ("label", v.as_str()),
        (None, Some(v)) => ("annotation", v.as_str()),
        (None, None) => return Ok(()),
    };
    match value.to_ascii_lowercase().as_str() {
        // YAML 1.1 booleans, as Istio reads them; empty means "use the default" (inject).
        "y" | "yes" | "true" | "on" | "" => Ok(()),
        _ => Err(Skip::Disabled {
            by,
            value: value.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn policy_checks_in_istio_order() {
        let none = labels(&[]);
        assert_eq!(decide(&none, &none, false, "default", None, "default"), Ok(()));
        assert_eq!(
            decide(&none, &none, true, "default", None, "default"),
            Err(Skip::HostNetwork)
        );
        assert_eq!(
            decide(&none, &none, false, "kube-system", None, "default"),
            Err(Skip::IgnoredNamespace("kube-system".into()))
        );
        let status = labels(&[(STATUS, "{}")]);
        assert_eq!(
            decide(&none, &status, true, "default", None, "default"),
            Err(Skip::AlreadyInjected)
        );
        for off in ["false", "no", "off", "n", "False"] {
            let l = labels(&[(INJECT, off)]);
            assert!(
                decide(&l, &none, false, "default", None, "default").is_err(),
                "{off}"
            );
            assert!(
                decide(&none, &l, false, "default", None, "default").is_err(),
                "{off}"
            );
        }
        for on in ["true", "yes", "on", "y", "TRUE", ""] {
            let l = labels(&[(INJECT, on)]);
            assert_eq!(
                decide(&l, &none, false, "default", None, "default"),
                Ok(()),
                "{on}"
            );
        }
        // The label wins over the annotation.
        let on = labels(&[(INJECT, "true")]);
        let off = labels(&[(INJECT, "false")]);
        assert_eq!(decide(&on, &off, false, "default", None, "default"), Ok(()));
        assert_eq!(
            decide(&off, &on, false, "default", None, "default"),
            Err(Skip::Disabled {
                by: "label",
                value: "false".into()
            })
        );
    }

    #[test]
    fn webhook_selectors() {
        let enabled = labels(&[(NAMESPACE_INJECTION_LABEL, "enabled")]);
        let disabled_ns = labels(&[(NAMESPACE_INJECTION_LABEL, "disabled")]);
        let rev_default = labels(&[(REV, "default")]);
        let rev_canary = labels(&[(REV, "canary")]);
        let plain = labels(&[]);
        let pod_on = labels(&[(INJECT, "true")]);
        let pod_off = labels(&[(INJECT, "false")]);
        let pod_rev_canary = labels(&[(REV, "canary")]);

        assert!(selected_by_webhooks(&enabled, &plain, "default"));
        assert!(!selected_by_webhooks(&enabled, &pod_off, "default"));
        assert!(!selected_by_webhooks(&disabled_ns, &pod_on, "default"));
        assert!(!selected_by_webhooks(&plain, &plain, "default"));
        assert!(selected_by_webhooks(&plain, &pod_on, "default"));
        assert!(selected_by_webhooks(&rev_default, &plain, "default"));
        assert!(!selected_by_webhooks(&rev_canary, &plain, "default"));
        assert!(selected_by_webhooks(&rev_canary, &plain, "canary"));
        assert!(selected_by_webhooks(&plain, &pod_rev_canary, "canary"));
        // A pod asking for another revision is not the default revision's.
        let pod_on_canary = labels(&[(INJECT, "true"), (REV, "canary")]);
        assert!(!selected_by_webhooks(&plain, &pod_on_canary, "default"));
        // Non-default revisions ignore istio-injection=enabled.
        assert!(!selected_by_webhooks(&enabled, &plain, "canary"));
        assert_eq!(
            decide(&plain, &plain, false, "ns", Some(&plain), "default"),
            Err(Skip::NotSelected)
        );
    }
}
