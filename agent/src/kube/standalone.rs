//! Standalone mode: the same kinds as the cluster, from YAML files (`sluice run --config
//! <file-or-dir>`). Files are re-read and applied live; a change that does not load cleanly
//! is rejected whole, with every error named by file, document and field, and the last good
//! state stays in force.
//!
//! Watching is poll-and-compare of the files' contents (default every second) rather than
//! inotify: a ConfigMap volume updates by swapping a `..data` symlink, editors save by
//! rename, and both are seen only by re-resolving paths; comparing bytes catches every one of
//! them, costs a few reads of small files per second, and needs no extra dependency.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    engine::Update,
    inputs::{
        Inputs, Named, ObjectKey, Origin, PodInfo, SecretData, ServiceInfo, SliceInfo,
        namespace_labels,
    },
};

mod parse;
mod schema;

pub use parse::{Doc, Resource, parse_file};

/// How often files are compared with what was last applied.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// One problem in one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocError {
    pub path: PathBuf,
    /// 0-based document index, when known.
    pub document: Option<usize>,
    pub kind: Option<String>,
    pub name: Option<String>,
    /// Starts with the field path when there is one (`spec.limits[0].window: ...`).
    pub message: String,
}

/// Why a configuration was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} contains no .yaml, .yml or .json files")]
    NoFiles { path: PathBuf },
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<DocError>),
}

fn list(errors: &[DocError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// === impl DocError ===

impl DocError {
    pub fn new(
        path: &Path,
        document: Option<usize>,
        kind: Option<String>,
        name: Option<String>,
        message: String,
    ) -> Self {
        Self {
            path: path.to_owned(),
            document,
            kind,
            name,
            message,
        }
    }
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(d) = self.document {
            write!(f, ": document {}", d + 1)?;
        }
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, " ({k} {n})")?,
            (Some(k), None) => write!(f, " ({k})")?,
            _ => {}
        }
        write!(f, ": {}", self.message)
    }
}

/// The files a `--config` path stands for: the file itself, or the directory's `.yaml`,
/// `.yml` and `.json` files (not recursive, hidden names skipped: a ConfigMap mount's
/// `..data` machinery), in name order.
pub fn config_files(path: &Path) -> Result<Vec<PathBuf>, Error> {
    let meta = fs::metadata(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let entries = fs::read_dir(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            !name.starts_with('.')
                && [".yaml", ".yml", ".json"]
                    .iter()
                    .any(|ext| name.ends_with(ext))
                && p.is_file()
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::NoFiles {
            path: path.to_owned(),
        });
    }
    Ok(files)
}

/// Reads every file of `path` (contents, for change detection).
pub fn read_all(path: &Path) -> Result<Vec<(PathBuf, String)>, Error> {
    config_files(path)?
        .into_iter()
        .map(|p| {
            fs::read_to_string(&p)
                .map(|text| (p.clone(), text))
                .map_err(|source| Error::Read { path: p, source })
        })
        .collect()
}

/// Parses and checks all files; `node` decides which Pods are local (those without
/// `spec.nodeName` or with this node's name).
pub fn load(files: &[(PathBuf, String)], node: &str) -> Result<Inputs, Error> {
    let mut inputs = Inputs::default();
    let mut errors = Vec::new();
    let mut all_pods = Vec::new();
    let mut seen: Vec<(String, String, Origin)> = Vec::new();
    for (path, text) in files {
        let (docs, errs) = parse_file(path, text);
        errors.extend(errs);
        for doc in docs {
            let origin = Origin::File {
                path: path.clone(),
                index: doc.index,
            };
            let (kind, id) = identity(&doc.resource);
            if let Some((_, _, first)) = seen.iter().find(|(k, i, _)| *k == kind && *i == id) {
                errors.push(DocError::new(
                    path,
                    Some(doc.index),
                    Some(kind.clone()),
                    Some(id.clone()),
                    format!("duplicate {kind} {id}; first defined in {first}"),
                ));
                continue;
            }
            seen.push((kind, id, origin.clone()));
            add(&mut inputs, &mut all_pods, doc.resource, origin);
        }
    }
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    for pod in all_pods {
        if pod.node.as_deref().is_none_or(|n| n == node) {
            inputs.local_pods.insert(pod.uid.clone(), pod.clone());
        }
        for (key, pool) in &inputs.pools {
            let labels = &pool.spec.selector.match_labels;
            if pod.namespace == key.namespace
                && labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
            {
                inputs
                    .pool_members
                    .entry(key.clone())
                    .or_default()
                    .push(pod.clone());
            }
        }
    }
    Ok(inputs)
}

fn identity(r: &Resource) -> (String, String) {
    let (kind, meta) = match r {
        Resource::TrafficPolicy(x) => ("TrafficPolicy", &x.metadata),
        Resource::TokenBudget(x) => ("TokenBudget", &x.metadata),
        Resource::ExternalProvider(x) => ("ExternalProvider", &x.metadata),
        Resource::InferencePool(x) => ("InferencePool", &x.metadata),
        Resource::Pod(x) => ("Pod", &x.metadata),
        Resource::Service(x) => ("Service", &x.metadata),
        Resource::EndpointSlice(x) => ("EndpointSlice", &x.metadata),
        Resource::Secret(x) => ("Secret", &x.metadata),
        Resource::Namespace(x) => ("Namespace", &x.metadata),
    };
    let name = meta.name.clone().unwrap_or_default();
    let id = match (kind, &meta.namespace) {
        ("TrafficPolicy" | "TokenBudget" | "ExternalProvider" | "Namespace", _) => name,
        (_, ns) => format!("{}/{name}", ns.as_deref().unwrap_or("default")),
    };
    (kind.to_owned(), id)
}

fn add(inputs: &mut Inputs, pods: &mut Vec<PodInfo>, r: Resource, origin: Origin) {
    let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        ObjectKey::new(
            m.namespace.as_deref().unwrap_or("default"),
            m.name.as_deref().unwrap_or_default(),
        )
    };
    match r {
        Resource::TrafficPolicy(x) => {
            let name = x.metadata.name.clone().unwrap_or_default();
            inputs.policies.insert(
                name.clone(),
                Named {
                    name,
                    origin,
                    spec: x.spec,
                },
            );
        }
        Resource::TokenBudget(x) => {
            let name = x.metadata.name.clone().unwrap_or_default();
            inputs.budgets.insert(
                name.clone(),
                Named {
                    name,
                    origin,
                    spec: x.spec,
                },
            );
        }
        Resource::ExternalProvider(x) => {
            let name = x.metadata.name.clone().unwrap_or_default();
            inputs.providers.insert(
                name.clone(),
                Named {
                    name,
                    origin,
                    spec: x.spec,
                },
            );
        }
        Resource::InferencePool(x) => {
            let k = key(&x.metadata);
            inputs.pools.insert(
                k.clone(),
                Named {
                    name: k.to_string(),
                    origin,
                    spec: x.spec,
                },
            );
        }
        Resource::Pod(x) => {
            // Files may omit the uid; the name then stands in for it (unique per namespace).
            let mut pod = *x;
            if pod.metadata.uid.is_none() {
                pod.metadata.uid = Some(format!("file:{}", key(&pod.metadata)));
            }
            pods.extend(PodInfo::from_pod(&pod));
        }
        Resource::Service(x) => {
            inputs
                .services
                .insert(key(&x.metadata), ServiceInfo::from_service(&x));
        }
        Resource::EndpointSlice(x) => {
            if let Some(slice) = SliceInfo::from_slice(&x) {
                inputs.slices.insert(key(&x.metadata), slice);
            }
        }
        Resource::Secret(x) => {
            inputs
                .secrets
                .insert(key(&x.metadata), SecretData::from(&*x));
        }
        Resource::Namespace(x) => {
            let name = x.metadata.name.clone().unwrap_or_default();
            inputs.namespaces.insert(name, namespace_labels(&x));
        }
    }
}

/// Loads `path` once; the caller decides whether a failure at start is fatal (it is for
/// `sluice run`: an agent must not start on a configuration it cannot read).
pub fn load_path(path: &Path, node: &str) -> Result<(Inputs, Vec<(PathBuf, String)>), Error> {
    let files = read_all(path)?;
    let inputs = load(&files, node)?;
    Ok((inputs, files))
}

/// Polls `path` and sends every changed configuration that loads cleanly. Starts from an
/// already applied `(inputs, files)`.
pub async fn watch(
    path: PathBuf,
    node: String,
    mut last_files: Vec<(PathBuf, String)>,
    interval: Duration,
    tx: mpsc::Sender<Update>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        tick.tick().await;
        let files = match read_all(&path) {
            Ok(f) => f,
            Err(e) => {
                report(&mut last_error, &e);
                continue;
            }
        };
        if files == last_files {
            continue;
        }
        match load(&files, &node) {
            Ok(inputs) => {
                info!(path = %path.display(), "configuration changed; applying");
                last_error = None;
                last_files = files;
                if tx
                    .send(Update {
                        inputs,
                        complete: true,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => report(&mut last_error, &e),
        }
    }
}

/// Logs a rejected configuration once (not on every poll), keeping the last good state.
fn report(last: &mut Option<String>, e: &Error) {
    let text = match e {
        Error::Read { path, source } => format!("reading {}: {source}", path.display()),
        other => other.to_string(),
    };
    if last.as_deref() != Some(&text) {
        warn!(error = %text, "configuration rejected; the last good configuration stays in force");
        *last = Some(text);
    }
}

#[cfg(test)]
mod tests;
