//! One file → its documents, each checked (YAML, strict fields, types, semantics) and turned
//! into a typed resource. Every error names the file, the document (1-based) and the field.

use std::{path::Path, sync::OnceLock};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Secret, Service},
    discovery::v1::EndpointSlice,
};
use kube::CustomResourceExt as _;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{DocError, schema};
use crate::kube::crds::{ExternalProvider, InferencePool, Invalid, TokenBudget, TrafficPolicy};

/// A parsed document.
#[derive(Debug)]
pub enum Resource {
    TrafficPolicy(Box<TrafficPolicy>),
    TokenBudget(Box<TokenBudget>),
    ExternalProvider(Box<ExternalProvider>),
    InferencePool(Box<InferencePool>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Secret(Box<Secret>),
    Namespace(Box<Namespace>),
}

/// A document with where it came from.
#[derive(Debug)]
pub struct Doc {
    /// 0-based index in its file.
    pub index: usize,
    pub resource: Resource,
}

/// The kinds files may contain, by `apiVersion` and `kind`.
const KINDS: &[(&str, &str)] = &[
    ("sluice.dev/v1alpha1", "TrafficPolicy"),
    ("sluice.dev/v1alpha1", "TokenBudget"),
    ("sluice.dev/v1alpha1", "ExternalProvider"),
    ("inference.networking.k8s.io/v1", "InferencePool"),
    ("v1", "Pod"),
    ("v1", "Service"),
    ("v1", "Secret"),
    ("v1", "Namespace"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
];

/// Parses every document of `text`. Returns the good documents and the errors; a caller that
/// wants all-or-nothing checks that the second is empty.
pub fn parse_file(path: &Path, text: &str) -> (Vec<Doc>, Vec<DocError>) {
    let values = match parse_yaml(text) {
        Ok(v) => v,
        Err((document, message)) => {
            return (
                Vec::new(),
                vec![DocError::new(path, document, None, None, message)],
            );
        }
    };
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        if value.is_null() {
            continue; // an empty document (a stray `---`)
        }
        match parse_doc(&value) {
            Ok(resource) => docs.push(Doc { index, resource }),
            Err(e) => errors.extend(e.into_iter().map(|(kind, name, message)| {
                DocError::new(path, Some(index), kind, name, message)
            })),
        }
    }
    (docs, errors)
}

/// YAML → one JSON value per document. Duplicate keys are errors (a silently dropped
/// duplicate is how guardrails get bypassed). Errors carry the document index if the line is
/// known.
fn parse_yaml(text: &str) -> Result<Vec<Value>, (Option<usize>, String)> {
    let mut options = serde_saphyr::Options::default();
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    serde_saphyr::from_multiple_with_options::<Value>(text, options).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let document = line.map(|l| document_of_line(text, l));
        let message = clean(&e.to_string());
        let message = match line {
            Some(l) if !message.starts_with("line ") => format!("line {l}: {message}"),
            _ => message,
        };
        (document, message)
    })
}

/// The parser's first line, without its severity prefix and its advice to library users.
fn clean(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    line.split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or(line)
        .to_owned()
}

/// Which document (0-based) a 1-based line falls in, counting `---` separators before it.
fn document_of_line(text: &str, line: u64) -> usize {
    let before = usize::try_from(line.saturating_sub(1)).unwrap_or(usize::MAX);
    let mut doc = 0;
    let mut seen_content = false;
    for l in text.lines().take(before) {
        if l.starts_with("---") {
            if seen_content {
                doc += 1;
            }
            seen_content = true; // a leading `---` opens document 0
        } else if !l.trim().is_empty() && !l.trim_start().starts_with('#') {
            seen_content = true;
        }
    }
    doc
}

type Problems = Vec<(Option<String>, Option<String>, String)>;

fn parse_doc(value: &Value) -> Result<Resource, Problems> {
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    let kind = value.get("kind").and_then(Value::as_str);
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(
            |n| match value.pointer("/metadata/namespace").and_then(Value::as_str) {
                Some(ns) => format!("{ns}/{n}"),
                None => n.to_owned(),
            },
        );
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        return Err(vec![(
            None,
            name,
            "apiVersion and kind are required".to_owned(),
        )]);
    };
    let k = Some(kind.to_owned());
    if !KINDS.contains(&(api_version, kind)) {
        let known: Vec<String> = KINDS.iter().map(|(a, k)| format!("{a} {k}")).collect();
        return Err(vec![(
            k,
            name,
            format!(
                "unsupported kind {api_version} {kind}; files may contain {}",
                known.join(", ")
            ),
        )]);
    }
    if name.as_deref().is_none_or(str::is_empty) {
        return Err(vec![(k, None, "metadata.name: required".to_owned())]);
    }
    let unknown = schema::unknown_fields(value, schema_for(kind));
    if !unknown.is_empty() {
        return Err(unknown
            .into_iter()
            .map(|f| (k.clone(), name.clone(), format!("{f}: unknown field")))
            .collect());
    }
    let problem = |m: String| vec![(k.clone(), name.clone(), m)];
    match kind {
        "TrafficPolicy" => typed::<TrafficPolicy>(value, |r| r.spec.validate())
            .map(|r| Resource::TrafficPolicy(Box::new(r))),
        "TokenBudget" => typed::<TokenBudget>(value, |r| r.spec.validate())
            .map(|r| Resource::TokenBudget(Box::new(r))),
        "ExternalProvider" => typed::<ExternalProvider>(value, |r| r.spec.validate())
            .map(|r| Resource::ExternalProvider(Box::new(r))),
        "InferencePool" => typed::<InferencePool>(value, |r| r.spec.validate())
            .map(|r| Resource::InferencePool(Box::new(r))),
        "Pod" => typed::<Pod>(value, |_| Ok(())).map(|r| Resource::Pod(Box::new(r))),
        "Service" => typed::<Service>(value, |_| Ok(())).map(|r| Resource::Service(Box::new(r))),
        "EndpointSlice" => {
            typed::<EndpointSlice>(value, |_| Ok(())).map(|r| Resource::EndpointSlice(Box::new(r)))
        }
        "Secret" => typed::<Secret>(value, |_| Ok(())).map(|r| Resource::Secret(Box::new(r))),
        _ => typed::<Namespace>(value, |_| Ok(())).map(|r| Resource::Namespace(Box::new(r))),
    }
    .map_err(problem)
}

/// Deserializes with the failing field's path in the message, then runs semantic checks.
fn typed<T: DeserializeOwned>(
    value: &Value,
    check: impl Fn(&T) -> Result<(), Invalid>,
) -> Result<T, String> {
    let resource: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        }
    })?;
    check(&resource).map_err(|e| e.to_string())?;
    Ok(resource)
}

/// The schema a kind's documents are checked against (built once).
fn schema_for(kind: &str) -> &'static Value {
    static SCHEMAS: OnceLock<Vec<(&'static str, Value)>> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        vec![
            ("TrafficPolicy", crd_schema(TrafficPolicy::crd())),
            ("TokenBudget", crd_schema(TokenBudget::crd())),
            ("ExternalProvider", crd_schema(ExternalProvider::crd())),
            ("InferencePool", crd_schema(InferencePool::crd())),
            ("Pod", core_schema::<Pod>()),
            ("Service", core_schema::<Service>()),
            ("EndpointSlice", core_schema::<EndpointSlice>()),
            ("Secret", core_schema::<Secret>()),
            ("Namespace", core_schema::<Namespace>()),
        ]
    });
    static EMPTY: Value = Value::Null;
    schemas
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(&EMPTY, |(_, s)| s)
}

fn crd_schema(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

fn core_schema<T: schemars::JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
}
