//! The CEL rules in the generated CRDs compile and decide like the agent's own validation:
//! examples pass, resources that only CEL can refuse (host bits in a CIDR, empty targets,
//! tenant fields that do not go together, limits without counts, bad endpoints, repeated
//! windows) are refused with the rule's message.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// (apiVersion, kind) → openAPIV3Schema, for sluice's CRDs.
fn schemas() -> Vec<((String, String), Value)> {
    sluice::kube::crds::sluice_crds()
        .into_iter()
        .map(|(_, crd)| {
            let v = &crd.spec.versions[0];
            let schema = serde_json::to_value(
                v.schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap(),
            )
            .unwrap();
            (
                (
                    format!("{}/{}", crd.spec.group, v.name),
                    crd.spec.names.kind.clone(),
                ),
                schema,
            )
        })
        .collect()
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// CEL verdicts for every sluice document in `docs`.
fn check(docs: &[Value]) -> Vec<Result<(), String>> {
    let schemas = schemas();
    let validator = kube_cel::Validator::new();
    docs.iter()
        .filter_map(|doc| {
            let key = (
                doc["apiVersion"].as_str()?.to_owned(),
                doc["kind"].as_str()?.to_owned(),
            );
            let schema = &schemas.iter().find(|(k, _)| *k == key)?.1;
            Some(validator.validate(schema, doc, None).map_err(|errors| {
                errors
                    .as_slice()
                    .iter()
                    .map(|e| format!("{}: {}", e.field_path, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            }))
        })
        .collect()
}

#[test]
fn every_cel_rule_compiles() {
    for ((_, kind), schema) in schemas() {
        let compiled = kube_cel::compile_schema(&schema);
        let errors: Vec<String> = compiled
            .compilation_errors()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{kind}: CEL rules that the API server would refuse: {errors:#?}"
        );
    }
}

#[test]
fn examples_pass_the_cel_rules() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/cluster"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.push(repo().join("examples/standalone.yaml"));
    let mut checked = 0;
    for file in files {
        for verdict in check(&documents(&file)) {
            assert_eq!(verdict, Ok(()), "{}", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} resources checked");
}

#[test]
fn cel_refuses_what_only_cel_can_catch() {
    for (fixture, message) in [
        ("cidr_host_bits", "no bits set past the prefix length"),
        (
            "empty_targets",
            "set at least one of services, cidrs or ports",
        ),
        (
            "podlabel_without_label",
            "label is required when source is PodLabel",
        ),
        (
            "limit_without_counts",
            "set at least one of inputTokens, outputTokens, totalTokens or requests",
        ),
        (
            "bad_endpoint",
            "must be an absolute http(s) URL with a host",
        ),
    ] {
        let path = repo().join(format!("tests/fixtures/config/bad/{fixture}.yaml"));
        let verdicts = check(&documents(&path));
        assert!(
            verdicts
                .iter()
                .any(|v| v.as_ref().is_err_and(|e| e.contains(message))),
            "{fixture}: expected a CEL error containing {message:?}, got {verdicts:?}"
        );
    }
    let repeated: Value = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "TokenBudget", "metadata": {"name": "b"},
        "spec": {"limits": [{"window": "1m", "requests": 1}, {"window": "1m", "totalTokens": 5}]}
    });
    let verdicts = check(&[repeated]);
    assert!(
        verdicts[0]
            .as_ref()
            .is_err_and(|e| e.contains("each window may appear only once")),
        "{verdicts:?}"
    );
}
