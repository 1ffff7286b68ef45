//! Strict field checking for standalone files: every key of a document must be a field the
//! kind's schema knows, as `kubectl apply` with server-side strict field validation does.
//! Types and enums are left to serde (which reports them with their path); this catches
//! what serde would silently drop, a misspelled optional field.
//!
//! The check walks the same OpenAPI v3 schema the CRD publishes (or the schemars schema of a
//! core kind), so files and `kubectl apply` agree on what a field is. Resources read from the
//! API server are not checked this way: the server has already pruned them against the
//! installed CRD, and an agent older than the CRD must keep working.

use serde_json::{Map, Value};

/// Fields of `metadata` that files may set.
const METADATA_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "generation",
    "resourceVersion",
    "creationTimestamp",
];

/// Keys in `value` that `schema` does not define, as field paths (`spec.targets.servces`).
/// `root` resolves `$ref`s (schemars puts shared definitions under `$defs`).
pub fn unknown_fields(value: &Value, schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Value::Object(obj) = value else {
        return out;
    };
    for (key, v) in obj {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => check_metadata(v, &mut out),
            _ => match property(schema, schema, key) {
                Some(sub) => walk(v, &sub, schema, key, &mut out),
                None => out.push(key.clone()),
            },
        }
    }
    out
}

fn check_metadata(value: &Value, out: &mut Vec<String>) {
    if let Value::Object(m) = value {
        for k in m.keys().filter(|k| !METADATA_FIELDS.contains(&k.as_str())) {
            out.push(format!("metadata.{k}"));
        }
    }
}

fn walk(value: &Value, schema: &Value, root: &Value, path: &str, out: &mut Vec<String>) {
    let schema = resolve(schema, root);
    if preserves_unknown(schema, root) {
        return;
    }
    match value {
        Value::Object(obj) => {
            let props = properties(schema, root);
            let additional = additional(schema, root);
            if props.is_none() && additional.is_none() {
                // A type the schema does not describe field by field (Quantity, Time, ...).
                return;
            }
            for (key, v) in obj {
                let child = format!("{path}.{key}");
                if let Some(sub) = props.as_ref().and_then(|p| p.get(key)) {
                    walk(v, sub, root, &child, out);
                } else if let Some(sub) = additional {
                    walk(v, sub, root, &child, out);
                } else {
                    out.push(child);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = items_schema(schema, root) {
                for (i, v) in items.iter().enumerate() {
                    walk(v, item_schema, root, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn property(schema: &Value, root: &Value, key: &str) -> Option<Value> {
    properties(resolve(schema, root), root)?.remove(key)
}

/// `properties` of a schema and of its `allOf`/`anyOf`/`oneOf` branches (schemars expresses
/// `Option<T>` and flattening that way), merged.
fn properties<'a>(schema: &'a Value, root: &'a Value) -> Option<Map<String, Value>> {
    let schema = resolve(schema, root);
    let mut merged: Option<Map<String, Value>> =
        schema.get("properties").and_then(Value::as_object).cloned();
    for key in ["allOf", "anyOf", "oneOf"] {
        for branch in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(p) = properties(branch, root) {
                merged.get_or_insert_with(Map::new).extend(p);
            }
        }
    }
    merged
}

fn additional<'a>(schema: &'a Value, root: &'a Value) -> Option<&'a Value> {
    let schema = resolve(schema, root);
    if let Some(a) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        return Some(a);
    }
    ["allOf", "anyOf", "oneOf"]
        .iter()
        .flat_map(|k| {
            schema
                .get(*k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find_map(|b| additional(b, root))
}

fn items_schema<'a>(schema: &'a Value, root: &'a Value) -> Option<&'a Value> {
    let schema = resolve(schema, root);
    if let Some(items) = schema.get("items") {
        return Some(items);
    }
    ["allOf", "anyOf", "oneOf"]
        .iter()
        .flat_map(|k| {
            schema
                .get(*k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find_map(|b| items_schema(b, root))
}

fn preserves_unknown(schema: &Value, root: &Value) -> bool {
    let schema = resolve(schema, root);
    schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
}

/// Follows `$ref: "#/$defs/Name"` (or `#/definitions/Name`), a bounded number of times.
fn resolve<'a>(mut schema: &'a Value, root: &'a Value) -> &'a Value {
    for _ in 0..16 {
        let Some(r) = schema.get("$ref").and_then(Value::as_str) else {
            return schema;
        };
        let Some(pointer) = r.strip_prefix('#') else {
            return schema;
        };
        match root.pointer(pointer) {
            Some(target) => schema = target,
            None => return schema,
        }
    }
    schema
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn finds_misspelled_and_nested_unknown_fields() {
        let schema = json!({
            "type": "object",
            "properties": {
                "spec": {"type": "object", "properties": {
                    "targets": {"type": "object", "properties": {
                        "services": {"type": "array", "items": {"$ref": "#/$defs/Svc"}}
                    }},
                    "config": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}}
                }}
            },
            "$defs": {"Svc": {"type": "object", "properties": {"name": {"type": "string"}}}}
        });
        let doc = json!({
            "apiVersion": "x/v1", "kind": "K",
            "metadata": {"name": "a", "lables": {}},
            "spec": {
                "targets": {"servces": [], "services": [{"name": "a", "nmae": "b"}]},
                "config": {"anything": {"goes": 1}},
                "labels": {"free": "form"}
            },
            "extra": 1
        });
        let mut found = unknown_fields(&doc, &schema);
        found.sort();
        assert_eq!(
            found,
            [
                "extra",
                "metadata.lables",
                "spec.targets.servces",
                "spec.targets.services[0].nmae"
            ]
        );
    }
}
