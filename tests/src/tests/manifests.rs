//! deploy/, crds/ and examples/ validated offline: Kubernetes' own schemas through PyPI's
//! `kubernetes-validate` (strict), and the example resources against the generated CRD
//! schemas (Python `jsonschema`, in the same venv `cargo xtask setup` makes).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The oldest Kubernetes sluice supports (k8s-openapi's `v1_33`).
const KUBERNETES_VERSION: &str = "1.33.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn venv_bin(name: &str) -> PathBuf {
    let bin = repo().join("target/py-venv/bin").join(name);
    assert!(
        bin.is_file(),
        "{} missing: run `cargo xtask setup` (it makes the venv with kubernetes-validate)",
        bin.display()
    );
    bin
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    files.sort();
    files
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn deploy_and_crds_pass_kubernetes_validate_strict() {
    let mut files = yaml_files("deploy");
    files.extend(yaml_files("crds"));
    files.extend(yaml_files("examples/cluster"));
    files.push(repo().join("examples/standalone.yaml"));
    let out = run(Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(&files));
    for kind in [
        "daemonset/sluice",
        "clusterrole/sluice-agent",
        "role/sluice-secrets",
        "serviceaccount/sluice",
        "configmap/sluice-agent",
        "namespace/sluice",
        "customresourcedefinition/trafficpolicies.sluice.dev",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind}")),
            "{kind} was not validated:\n{out}"
        );
    }
    assert!(!out.contains("ERROR"), "{out}");
}

#[test]
fn the_daemonset_uses_capabilities_not_privileged() {
    let text = std::fs::read_to_string(repo().join("deploy/daemonset.yaml")).unwrap();
    let agent = text
        .split("containers:\n        - name: agent")
        .nth(1)
        .expect("agent container");
    assert!(agent.contains("privileged: false"));
    for cap in ["BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"] {
        assert!(agent.contains(cap), "capability {cap}");
    }
    assert!(text.contains("maxSurge: 1") && text.contains("maxUnavailable: 0"));
    assert_eq!(
        text.matches("mountPropagation: Bidirectional").count(),
        1,
        "Bidirectional only for the bpffs init step"
    );
}

#[test]
fn examples_match_the_generated_crd_schemas_and_bad_resources_do_not() {
    let dir = std::env::temp_dir().join(format!("sluice-crd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The upstream InferencePool CRD is installed from upstream; examples are checked against
    // the schema of our mirror of its types.
    let pool = dir.join("inferencepools.yaml");
    std::fs::write(
        &pool,
        sluice::kube::crds::to_yaml(&sluice::kube::crds::inference_pool_crd()).unwrap(),
    )
    .unwrap();
    let mut crds = yaml_files("crds");
    crds.push(pool);
    let mut valid = yaml_files("examples/cluster");
    valid.push(repo().join("examples/standalone.yaml"));
    let bad = [
        "unknown_enum",
        "wrong_type",
        "port_out_of_range",
        "missing_required_field",
        "misspelled_key",
        "misspelled_metadata",
    ]
    .map(|n| repo().join(format!("tests/fixtures/config/bad/{n}.yaml")));
    let out = run(Command::new(venv_bin("python3"))
        .arg(repo().join("tests/scripts/validate_crs.py"))
        .arg("--crd")
        .args(&crds)
        .arg("--valid")
        .args(&valid)
        .arg("--invalid")
        .args(&bad));
    eprintln!("{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        valid.len() + bad.len(),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
