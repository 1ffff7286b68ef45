//! The fake API server's storage: objects per resource, a global resourceVersion (etcd's
//! revision), an event history for watches, and compaction (after which old versions answer
//! 410 Gone, as an etcd compaction makes the real server do).

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

/// A resource type the server knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a status subresource: the main endpoint ignores `status`, `/status` ignores the rest.
    pub status: bool,
}

/// Every type the agent watches.
pub const TYPES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
        status: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
        status: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        status: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        status: false,
    },
    ResourceType {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
        status: false,
    },
    ResourceType {
        group: "sluice.dev",
        version: "v1alpha1",
        plural: "trafficpolicies",
        kind: "TrafficPolicy",
        namespaced: false,
        status: true,
    },
    ResourceType {
        group: "sluice.dev",
        version: "v1alpha1",
        plural: "tokenbudgets",
        kind: "TokenBudget",
        namespaced: false,
        status: true,
    },
    ResourceType {
        group: "sluice.dev",
        version: "v1alpha1",
        plural: "externalproviders",
        kind: "ExternalProvider",
        namespaced: false,
        status: true,
    },
    ResourceType {
        group: "inference.networking.k8s.io",
        version: "v1",
        plural: "inferencepools",
        kind: "InferencePool",
        namespaced: true,
        status: true,
    },
];

/// `namespace/name` (namespace empty for cluster-scoped objects).
pub type ObjectKey = (String, String);

/// One change.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: ResourceType,
    pub key: ObjectKey,
    /// `None`: did not exist before.
    pub before: Option<Value>,
    /// `None`: deleted.
    pub after: Option<Value>,
}

/// All objects and their history.
#[derive(Debug, Default)]
pub struct Store {
    pub rv: u64,
    objects: BTreeMap<ResourceType, BTreeMap<ObjectKey, Value>>,
    /// Changes after `compacted`.
    history: Vec<Change>,
    /// Objects as of `compacted` (the base that history replays onto).
    base: BTreeMap<ResourceType, BTreeMap<ObjectKey, Value>>,
    pub compacted: u64,
    next_uid: u64,
    /// Server-side apply: keys of list-map entries owned per (object, manager, list path).
    owned: HashMap<(ResourceType, ObjectKey, String), Vec<String>>,
}

/// Why a write failed: `(code, reason, message)`.
pub type WriteError = (u16, &'static str, String);

// === impl Store ===

impl Store {
    pub fn get(&self, t: ResourceType, key: &ObjectKey) -> Option<&Value> {
        self.objects.get(&t)?.get(key)
    }

    /// Objects of `t` as they were at `rv` (≥ `compacted`), in key order.
    pub fn list_at(&self, t: ResourceType, rv: u64) -> Vec<(ObjectKey, Value)> {
        if rv >= self.rv {
            return self
                .objects
                .get(&t)
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        let mut state = self.base.get(&t).cloned().unwrap_or_default();
        for c in self
            .history
            .iter()
            .filter(|c| c.resource == t && c.rv <= rv)
        {
            match &c.after {
                Some(v) => state.insert(c.key.clone(), v.clone()),
                None => state.remove(&c.key),
            };
        }
        state.into_iter().collect()
    }

    /// Changes of `t` after `rv`.
    pub fn changes_since(&self, t: ResourceType, rv: u64) -> impl Iterator<Item = &Change> {
        self.history
            .iter()
            .filter(move |c| c.resource == t && c.rv > rv)
    }

    /// Forgets history: versions before now answer 410 Gone.
    pub fn compact(&mut self) {
        self.compacted = self.rv;
        self.base = self.objects.clone();
        self.history.clear();
    }

    /// Creates or replaces `obj` (the main resource; its `status` is kept as stored unless
    /// the type has no status subresource or the object is new).
    pub fn put(
        &mut self,
        t: ResourceType,
        mut obj: Value,
        create_only: bool,
    ) -> Result<Value, WriteError> {
        let key = object_key(t, &obj)?;
        let before = self.get(t, &key).cloned();
        if create_only && before.is_some() {
            return Err((
                409,
                "AlreadyExists",
                format!("{} {:?} already exists", t.plural, key.1),
            ));
        }
        self.rv += 1;
        let meta = obj
            .as_object_mut()
            .and_then(|o| o.get_mut("metadata"))
            .and_then(Value::as_object_mut);
        let Some(meta) = meta else {
            return Err((400, "BadRequest", "metadata is required".into()));
        };
        meta.remove("resourceVersion");
        meta.remove("managedFields");
        match &before {
            None => {
                self.next_uid += 1;
                let uid = meta.get("uid").and_then(Value::as_str).map_or_else(
                    || format!("00000000-0000-4000-8000-{:012x}", self.next_uid),
                    str::to_owned,
                );
                meta.insert("uid".into(), json!(uid));
                meta.insert("generation".into(), json!(1));
                meta.insert("creationTimestamp".into(), json!("2026-01-01T00:00:00Z"));
            }
            Some(prev) => {
                for f in ["uid", "creationTimestamp", "generation"] {
                    if let Some(v) = prev.pointer(&format!("/metadata/{f}")) {
                        meta.insert(f.into(), v.clone());
                    }
                }
                let spec_changed = strip_for_generation(prev) != strip_for_generation(&obj);
                if spec_changed {
                    let g = prev
                        .pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    set(&mut obj, "/metadata/generation", json!(g + 1));
                }
                if t.status {
                    match prev.get("status") {
                        Some(s) => set(&mut obj, "/status", s.clone()),
                        None => remove(&mut obj, "status"),
                    }
                }
            }
        }
        set(
            &mut obj,
            "/metadata/resourceVersion",
            json!(self.rv.to_string()),
        );
        self.record(t, key, before, Some(obj.clone()));
        Ok(obj)
    }

    /// Server-side apply of `status` by `manager`: list-maps keyed by `node` or `type` are
    /// merged per key; entries the manager applied before and left out now are removed.
    pub fn apply_status(
        &mut self,
        t: ResourceType,
        key: &ObjectKey,
        manager: &str,
        patch: &Value,
    ) -> Result<Value, WriteError> {
        let Some(before) = self.get(t, key).cloned() else {
            return Err((
                404,
                "NotFound",
                format!("{} {:?} not found", t.plural, key.1),
            ));
        };
        let mut obj = before.clone();
        let mut status = obj.get("status").cloned().unwrap_or_else(|| json!({}));
        if let Some(applied) = patch.get("status").and_then(Value::as_object) {
            for (field, value) in applied {
                match (value.as_array(), list_map_key(field)) {
                    (Some(items), Some(map_key)) => {
                        let owned_key = (
                            t,
                            key.clone(),
                            format!("status.{field}"),
                            manager.to_owned(),
                        );
                        self.merge_list_map(&mut status, field, items, map_key, owned_key);
                    }
                    _ => {
                        status[field] = value.clone();
                    }
                }
            }
        }
        obj["status"] = status;
        self.rv += 1;
        set(
            &mut obj,
            "/metadata/resourceVersion",
            json!(self.rv.to_string()),
        );
        set(
            &mut obj,
            "/metadata/managedFields",
            managed_fields(&before, manager),
        );
        self.record(t, key.clone(), Some(before), Some(obj.clone()));
        Ok(obj)
    }

    fn merge_list_map(
        &mut self,
        status: &mut Value,
        field: &str,
        items: &[Value],
        map_key: &'static str,
        (t, key, path, manager): (ResourceType, ObjectKey, String, String),
    ) {
        let id = |v: &Value| {
            v.get(map_key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let applied: Vec<String> = items.iter().map(id).collect();
        let previously = self
            .owned
            .insert((t, key, format!("{path}/{manager}")), applied.clone())
            .unwrap_or_default();
        let mut list: Vec<Value> = status
            .get(field)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        list.retain(|e| {
            let k = id(e);
            !previously.contains(&k) || applied.contains(&k)
        });
        for item in items {
            match list.iter_mut().find(|e| id(e) == id(item)) {
                Some(e) => *e = item.clone(),
                None => list.push(item.clone()),
            }
        }
        status[field] = Value::Array(list);
    }

    pub fn delete(&mut self, t: ResourceType, key: &ObjectKey) -> Result<Value, WriteError> {
        let Some(before) = self.get(t, key).cloned() else {
            return Err((
                404,
                "NotFound",
                format!("{} {:?} not found", t.plural, key.1),
            ));
        };
        self.rv += 1;
        let mut gone = before.clone();
        set(
            &mut gone,
            "/metadata/resourceVersion",
            json!(self.rv.to_string()),
        );
        self.record(t, key.clone(), Some(before), None);
        Ok(gone)
    }

    fn record(
        &mut self,
        t: ResourceType,
        key: ObjectKey,
        before: Option<Value>,
        after: Option<Value>,
    ) {
        let objects = self.objects.entry(t).or_default();
        match &after {
            Some(v) => objects.insert(key.clone(), v.clone()),
            None => objects.remove(&key),
        };
        self.history.push(Change {
            rv: self.rv,
            resource: t,
            key,
            before,
            after,
        });
    }
}

fn object_key(t: ResourceType, obj: &Value) -> Result<ObjectKey, WriteError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let Some(name) = name else {
        return Err((422, "Invalid", "metadata.name: Required value".into()));
    };
    let ns = if t.namespaced {
        obj.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned()
    } else {
        String::new()
    };
    Ok((ns, name.to_owned()))
}

/// What a generation bump compares: everything but metadata and status.
fn strip_for_generation(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    v
}

/// The key of a status list declared `x-kubernetes-list-type: map` (sluice's `nodes`,
/// the conventional `conditions`).
fn list_map_key(field: &str) -> Option<&'static str> {
    match field {
        "nodes" => Some("node"),
        "conditions" => Some("type"),
        _ => None,
    }
}

fn managed_fields(before: &Value, manager: &str) -> Value {
    let mut fields: Vec<Value> = before
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    fields.retain(|f| f.get("manager").and_then(Value::as_str) != Some(manager));
    fields.push(json!({
        "manager": manager,
        "operation": "Apply",
        "subresource": "status",
        "apiVersion": before.get("apiVersion").cloned().unwrap_or(Value::Null),
        "time": "2026-01-01T00:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:status": {}},
    }));
    Value::Array(fields)
}

fn set(obj: &mut Value, pointer: &str, value: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let Some(map) = cur.as_object_mut() else {
            return;
        };
        if i + 1 == parts.len() {
            map.insert((*p).to_owned(), value);
            return;
        }
        cur = map.entry((*p).to_owned()).or_insert_with(|| json!({}));
    }
}

fn remove(obj: &mut Value, field: &str) {
    if let Some(o) = obj.as_object_mut() {
        o.remove(field);
    }
}
