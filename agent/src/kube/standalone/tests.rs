use std::path::{Path, PathBuf};

use super::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load_text(name: &str, text: &str) -> Result<Inputs, Error> {
    load(&[(PathBuf::from(name), text.to_owned())], "node-a")
}

/// envoyproxy/ratelimit style: one file per bad configuration, each with the error it must
/// produce (`# expect: ...` on its first line), naming the file, the document and the field.
#[test]
fn every_bad_fixture_is_rejected_with_its_message() {
    let dir = repo().join("tests/fixtures/config/bad");
    let files = config_files(&dir).expect("fixtures");
    assert!(files.len() >= 20, "fixtures missing: {files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: no `# expect:` line", path.display()));
        match load(&[(path.clone(), text.clone())], "node-a") {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(expect),
                    "{}:\n  expected {expect:?}\n  got {msg}",
                    path.display()
                );
                assert!(
                    msg.contains(&path.display().to_string()),
                    "{}: the message must name the file: {msg}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn the_embedded_example_loads() {
    let (inputs, _) = load_path(&repo().join("examples/standalone.yaml"), "node-a").expect("load");
    assert_eq!(inputs.policies.len(), 1);
    assert_eq!(inputs.budgets.len(), 1);
    assert_eq!(inputs.pools.len(), 1);
    assert_eq!(inputs.services.len(), 1);
    let p = &inputs.policies["inference"];
    assert_eq!(p.spec.targets.ports, [11434]);
    assert!(
        matches!(&p.origin, Origin::File { index: 0, .. }),
        "{:?}",
        p.origin
    );
}

#[test]
fn the_cluster_examples_load_as_files_too() {
    let inputs = load(
        &read_all(&repo().join("examples/cluster")).unwrap(),
        "node-a",
    )
    .unwrap();
    assert_eq!(
        (
            inputs.policies.len(),
            inputs.budgets.len(),
            inputs.providers.len(),
            inputs.pools.len()
        ),
        (1, 1, 1, 1)
    );
    let secret = &inputs.secrets[&ObjectKey::new("sluice", "openai")];
    assert_eq!(secret.0["api-key"], b"sk-replace-me");
    assert!(
        !format!("{secret:?}").contains("sk-"),
        "secret values never print"
    );
}

#[test]
fn pods_on_other_nodes_are_pool_members_but_not_local() {
    let text = r#"
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: llama, namespace: ml}
spec:
  selector: {matchLabels: {app: vllm}}
  targetPorts: [{number: 8000}]
---
apiVersion: v1
kind: Pod
metadata:
  name: here
  namespace: ml
  uid: 0b8f5c1e-3d2a-4f6b-9c7d-1e2f3a4b5c6d
  labels: {app: vllm}
  annotations: {sluice.dev/cgroup: sluice-tests/here}
spec:
  nodeName: node-a
  serviceAccountName: vllm
  containers:
    - name: server
      image: vllm
      resources: {limits: {nvidia.com/gpu: "2"}}
status: {podIP: 198.18.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: there, namespace: ml, labels: {app: vllm}}
spec: {nodeName: node-b, containers: []}
status: {podIP: 198.18.1.10}
"#;
    let inputs = load_text("pods.yaml", text).unwrap();
    assert_eq!(inputs.local_pods.len(), 1);
    let here = inputs.local_pods.values().next().unwrap();
    assert_eq!((here.name.as_str(), here.gpus), ("here", 2));
    assert_eq!(here.service_account, "vllm");
    assert_eq!(here.cgroup.as_deref(), Some(Path::new("sluice-tests/here")));
    assert_eq!(inputs.pool_members[&ObjectKey::new("ml", "llama")].len(), 2);
}

#[test]
fn errors_from_several_files_are_all_reported() {
    let a = (
        PathBuf::from("a.yaml"),
        "apiVersion: v1\nkind: Nope\nmetadata: {name: x}\n".to_owned(),
    );
    let b = (PathBuf::from("b.yaml"), "apiVersion: sluice.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: y}\nspec: {targets: {}}\n".to_owned());
    let Err(Error::Invalid(errors)) = load(&[a, b], "n") else {
        panic!("accepted")
    };
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0].path, Path::new("a.yaml"));
    assert_eq!(errors[1].path, Path::new("b.yaml"));
}

#[test]
fn directories_skip_hidden_and_foreign_files() {
    let dir = std::env::temp_dir().join(format!("sluice-cfgdir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("..data")).unwrap();
    std::fs::write(dir.join("b.yaml"), "").unwrap();
    std::fs::write(dir.join("a.yml"), "").unwrap();
    std::fs::write(dir.join("notes.txt"), "").unwrap();
    std::fs::write(dir.join(".hidden.yaml"), "").unwrap();
    let files = config_files(&dir).unwrap();
    let names: Vec<_> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a.yml", "b.yaml"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn watch_applies_good_changes_and_keeps_the_last_good_state() {
    let dir = std::env::temp_dir().join(format!("sluice-cfgwatch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yaml");
    let policy = |port: u32| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: p}}\nspec: {{targets: {{ports: [{port}]}}}}\n"
        )
    };
    std::fs::write(&file, policy(8000)).unwrap();
    let (_, files) = load_path(&dir, "n").unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    let task = tokio::spawn(watch(
        dir.clone(),
        "n".into(),
        files,
        Duration::from_millis(20),
        tx,
    ));

    std::fs::write(&file, "apiVersion: sluice.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec: {targets: {prots: [1]}}\n").unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
    assert!(quiet.is_err(), "a bad file must not be applied");

    // A ConfigMap-style swap: write elsewhere, rename over.
    let tmp = dir.join(".tmp");
    std::fs::write(&tmp, policy(9000)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let update = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("the good change is applied")
        .expect("channel open");
    assert_eq!(update.inputs.policies["p"].spec.targets.ports, [9000]);
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
