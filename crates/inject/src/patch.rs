//! RFC 6902 JSON Patch between the admitted pod and the injected one: what the webhook returns.

use serde_json::{json, Value};

/// RFC 6901 escaping of one path segment (`sidecar.istio.io/status` → `sidecar.istio.io~1status`).
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The operations that turn `from` into `to`. Objects are diffed key by key; a list that only
/// grew gets `add`s for its new items; any other list change replaces the list.
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    walk(&mut String::new(), from, to, &mut ops);
    ops
}

fn walk(path: &mut String, from: &Value, to: &Value, ops: &mut Vec<Value>) {
    if from == to {
        return;
    }
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                ops.push(json!({"op": "remove", "path": format!("{path}/{}", escape(key))}));
            }
            for (key, value) in b {
                let len = path.len();
                path.push('/');
                path.push_str(&escape(key));
                match a.get(key) {
                    Some(old) => walk(path, old, value, ops),
                    None => ops.push(json!({"op": "add", "path": path.clone(), "value": value})),
                }
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() <= b.len() && b[..a.len()] == a[..] => {
            for (i, value) in b.iter().enumerate().skip(a.len()) {
                ops.push(json!({"op": "add", "path": format!("{path}/{i}"), "value": value}));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (old, new)) in a.iter().zip(b).enumerate() {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                walk(path, old, new, ops);
                path.truncate(len);
            }
        }
        _ => ops.push(json!({"op": "replace", "path": path.clone(), "value": to})),
    }
}

/// Applies a patch made by [`diff`] (add, remove, replace only). For tests and kube-inject
/// self-checks; the webhook's patch is verified with an independent implementation in tests.
pub fn apply(doc: &mut Value, ops: &[Value]) -> Result<(), String> {
    for op in ops {
        let kind = op["op"].as_str().ok_or("op without \"op\"")?;
        let path = op["path"].as_str().ok_or("op without \"path\"")?;
        if path.is_empty() {
            *doc = op["value"].clone();
            continue;
        }
        let (parent, last) = path
            .rsplit_once('/')
            .ok_or_else(|| format!("bad path {path:?}"))?;
        let last = last.replace("~1", "/").replace("~0", "~");
        let target = doc
            .pointer_mut(parent)
            .ok_or_else(|| format!("no parent for {path:?}"))?;
        match (kind, target) {
            ("add" | "replace", Value::Object(m)) => {
                m.insert(last, op["value"].clone());
            }
            ("remove", Value::Object(m)) => {
                m.remove(&last);
            }
            ("add", Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
            (k, Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| format!("bad index in {path:?}"))?;
                match k {
                    "add" if i <= a.len() => a.insert(i, op["value"].clone()),
                    "replace" if i < a.len() => a[i] = op["value"].clone(),
                    "remove" if i < a.len() => {
                        a.remove(i);
                    }
                    _ => return Err(format!("cannot {k} {path:?}")),
                }
            }
            _ => return Err(format!("cannot {kind} {path:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_then_apply_round_trips() {
        let from = json!({"metadata": {"labels": {"app": "x"}, "gone": 1},
            "spec": {"containers": [{"name": "a"}], "volumes": [{"name": "v"}]}});
        let to = json!({"metadata": {"labels": {"app": "x", "a/b~c": "y"}, "annotations": {"k": "v"}},
            "spec": {"containers": [{"name": "a"}, {"name": "istio-proxy"}], "volumes": [{"name": "n"}, {"name": "v"}]}});
        let ops = diff(&from, &to);
        assert!(ops.contains(&json!({"op": "add", "path": "/metadata/labels/a~1b~0c", "value": "y"})));
        assert!(ops
            .contains(&json!({"op": "add", "path": "/spec/containers/1", "value": {"name": "istio-proxy"}})));
        let mut doc = from.clone();
        apply(&mut doc, &ops).unwrap();
        assert_eq!(doc, to);
        assert!(diff(&to, &to).is_empty());
    }
}
