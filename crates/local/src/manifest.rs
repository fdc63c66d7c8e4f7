//! Reading a directory of manifests the way `kubectl apply -f DIR [-n NS]` does: every
//! `.yaml`/`.yml`/`.json` file in it (not recursive), multi-document, `List`s expanded, the
//! namespace defaulted for namespaced kinds. Each object is validated by the control plane's own
//! parser so `up` reports what `skiffd` would reject, naming file, document and field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// Kinds without a namespace (`kubectl api-resources --namespaced=false`, the common ones).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "Node",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
];

/// One object and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    /// `file.yaml#2` (0-based document index), for messages.
    pub origin: String,
    pub value: Value,
}

impl Doc {
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// `Kind ns/name`, as kubectl names objects.
    pub fn display(&self) -> String {
        if self.namespace().is_empty() {
            format!("{} {}", self.kind(), self.name())
        } else {
            format!("{} {}/{}", self.kind(), self.namespace(), self.name())
        }
    }
}

/// The manifest files of `dir`, sorted by name as kubectl applies them.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.is_file() {
        return Ok(vec![dir.to_owned()]);
    }
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("reading manifests from {}", dir.display()))?
    {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
        if path.is_file() && matches!(ext, "yaml" | "yml" | "json") {
            out.push(path);
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("{} has no .yaml, .yml or .json manifests", dir.display());
    }
    Ok(out)
}

/// Parses the text of one file into objects, defaulting the namespace.
pub fn parse(file: &str, text: &str, default_namespace: &str) -> Result<Vec<Doc>> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let origin = format!("{file}#{i}");
        let value = Value::deserialize(de).with_context(|| format!("{origin}: invalid YAML"))?;
        if value.is_null() {
            continue;
        }
        let items = if value.get("kind").and_then(Value::as_str) == Some("List") {
            match value.get("items") {
                Some(Value::Array(items)) => items.clone(),
                _ => bail!("{origin}: items: a List needs an items array"),
            }
        } else {
            vec![value]
        };
        for mut v in items {
            let Some(kind) = v.get("kind").and_then(Value::as_str).map(str::to_owned) else {
                bail!("{origin}: kind: is required");
            };
            if v.pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                bail!("{origin} ({kind}): metadata.name: is required");
            }
            if !CLUSTER_SCOPED.contains(&kind.as_str()) {
                if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    if meta
                        .get("namespace")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        meta.insert("namespace".into(), Value::String(default_namespace.to_owned()));
                    }
                }
            }
            // The control plane's parser: the same checks skiffd makes when it reads the registry.
            if let Err(e) = pilot::model::parse_value(&origin, v.clone()) {
                bail!("{e}");
            }
            out.push(Doc {
                origin: origin.clone(),
                value: v,
            });
        }
    }
    Ok(out)
}

/// Loads every manifest of `dir` (or the single file `dir`).
pub fn load(dir: &Path, default_namespace: &str) -> Result<Vec<Doc>> {
    let mut docs = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for f in files(dir)? {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for d in parse(&name, &text, default_namespace)? {
            // Later documents win, as repeated `kubectl apply` would; say so.
            if let Some(prev) = seen.insert(d.display(), d.origin.clone()) {
                tracing::warn!(
                    "{} is defined twice ({prev} and {}); using the last",
                    d.display(),
                    d.origin
                );
                docs.retain(|o: &Doc| o.display() != d.display());
            }
            docs.push(d);
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_namespace_and_expands_lists() {
        let docs = parse(
            "a.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: sidecar}\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: nginx}\n  spec: {ports: [{port: 80}]}\n",
            "sidecar",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].namespace(), "");
        assert_eq!(docs[1].display(), "Service sidecar/nginx");
        assert_eq!(docs[1].origin, "a.yaml#1");
    }

    #[test]
    fn errors_name_the_document_and_field() {
        let e = parse(
            "b.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {}\n",
            "default",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("b.yaml#0") && e.contains("metadata.name"), "{e}");
        let e = parse(
            "c.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 99999}]}\n",
            "default",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("c.yaml") && e.contains("port"), "{e}");
        assert!(parse("d.yaml", ": : :", "default").is_err());
    }
}
