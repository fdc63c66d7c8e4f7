//! `kube-inject` over manifests: multi-document YAML in, the same documents out with the pod
//! templates of workload kinds injected, every other document passed through.

use serde::Deserialize;
use serde_json::Value;

use crate::pod::{inject, Outcome, Target};
use crate::settings::Settings;
use crate::Error;

/// Where the pod template sits in each kind `kube-inject` handles.
pub fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
            Some(&["spec", "template"])
        }
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// A document's result: injected (or passed through), plus a note when injection was skipped.
pub struct Injected {
    pub documents: Vec<Value>,
    pub warnings: Vec<String>,
}

/// Parses multi-document YAML; empty documents (a trailing `---`, comments only) are dropped.
pub fn parse_documents(input: &str) -> Result<Vec<Value>, Error> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| Error::Yaml {
            document: i + 1,
            message: e.to_string(),
        })?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Writes documents as multi-document YAML, the way `istioctl kube-inject` separates them.
pub fn write_documents(docs: &[Value]) -> Result<String, Error> {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(d).map_err(|e| Error::Output(e.to_string()))?);
    }
    Ok(out)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

/// Injects one document (recursing into `kind: List`).
pub fn inject_document(
    doc: &mut Value,
    settings: &Settings,
    warnings: &mut Vec<String>,
) -> Result<(), Error> {
    let kind = str_at(doc, &["kind"]).to_string();
    if kind == "List" {
        if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                inject_document(item, settings, warnings)?;
            }
        }
        return Ok(());
    }
    let Some(path) = template_path(&kind) else {
        return Ok(());
    };
    let target = Target {
        kind: kind.clone(),
        api_version: str_at(doc, &["apiVersion"]).to_string(),
        name: str_at(doc, &["metadata", "name"]).to_string(),
        namespace: str_at(doc, &["metadata", "namespace"]).to_string(),
        field_prefix: path.iter().map(|p| format!("{p}.")).collect(),
        namespace_labels: None,
        display: None,
    };
    let mut template = &mut *doc;
    for p in path {
        template = match template.get_mut(*p) {
            Some(t) if t.is_object() => t,
            _ => {
                return Err(Error::Invalid {
                    object: target.object(),
                    problems: vec![crate::Problem {
                        field: path.join("."),
                        message: "is required for injection".into(),
                    }],
                })
            }
        };
    }
    // The template's own namespace or name, if set, wins (as in Istio's IntoObject).
    let mut target = target;
    let template_ns = str_at(template, &["metadata", "namespace"]);
    if !template_ns.is_empty() && target.namespace.is_empty() {
        target.namespace = template_ns.to_string();
    }
    match inject(template, &target, settings)? {
        Outcome::Injected(pod) => *template = pod,
        Outcome::Skipped(reason) => {
            warnings.push(format!(
                "===> Skipping injection because {} {reason}",
                target.object()
            ));
        }
    }
    Ok(())
}

/// `skiffctl kube-inject`: YAML in, injected YAML out.
pub fn kube_inject(input: &str, settings: &Settings) -> Result<(String, Vec<String>), Error> {
    let mut docs = parse_documents(input)?;
    let mut warnings = Vec::new();
    for doc in &mut docs {
        inject_document(doc, settings, &mut warnings)?;
    }
    Ok((write_documents(&docs)?, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_kinds_pass_through_and_errors_name_the_document() {
        let input = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n---\n# only a comment\n";
        let (out, warnings) = kube_inject(input, &Settings::default()).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(parse_documents(&out).unwrap(), parse_documents(input).unwrap());
        let err = kube_inject("kind: Pod\n---\nkind: [", &Settings::default()).unwrap_err();
        assert!(err.to_string().starts_with("YAML document 2:"), "{err}");
    }

    #[test]
    fn missing_template_is_named() {
        let err = kube_inject(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec: {}\n",
            &Settings::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "CronJob c: spec.jobTemplate.spec.template: is required for injection"
        );
    }
}
