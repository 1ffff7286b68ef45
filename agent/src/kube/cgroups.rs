//! cgroup id → pod: the connecting process's cgroup id (`bpf_get_current_cgroup_id()`) is the
//! inode of its container's cgroup v2 directory, which kubelet places under the pod's own
//! directory:
//! - cgroupfs driver: `kubepods[/burstable|/besteffort]/pod<uid>/<container-id>`
//! - systemd driver: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with
//!   _ for ->.slice/cri-containerd-<id>.scope`
//!
//! The scanner finds pod directories by name under the cgroup2 mount and indexes the inodes of
//! each pod directory and everything below it (containers, and their children when a runtime
//! nests). Containers start after their pod appears, so callers rescan on pod updates and on
//! lookup misses (rate-limited by [`super::identity`]).

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use tracing::debug;

/// Pod directories sit at most this deep under the mount (`kubepods.slice/kubepods-
/// burstable.slice/<pod>` is depth 3; kind and nested setups add a level or two).
const MAX_POD_DEPTH: usize = 6;
/// Below a pod directory: containers, and runtimes that nest one more level.
const MAX_CONTAINER_DEPTH: usize = 3;
/// A bound on directories visited in one scan, so a pathological tree cannot stall the agent.
const MAX_VISITED: usize = 200_000;

/// Which pod uid each indexed cgroup id belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupIndex {
    by_uid: HashMap<String, Vec<u64>>,
}

/// Walks a cgroup2 hierarchy for pod directories.
#[derive(Clone, Debug)]
pub struct Scanner {
    root: PathBuf,
}

// === impl CgroupIndex ===

impl CgroupIndex {
    pub fn ids(&self, uid: &str) -> &[u64] {
        self.by_uid.get(uid).map(Vec::as_slice).unwrap_or_default()
    }

    pub fn insert(&mut self, uid: &str, id: u64) {
        let ids = self.by_uid.entry(uid.to_owned()).or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }

    pub fn len(&self) -> usize {
        self.by_uid.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }
}

// === impl Scanner ===

impl Scanner {
    /// `root` is the cgroup2 mount (or, in tests, any directory tree shaped like one).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Indexes the cgroups of the pods named by `uids`, plus explicit cgroup paths (standalone
    /// mode's `sluice.dev/cgroup` annotation, relative to the root) for the pods that have one.
    pub fn scan<'a>(
        &self,
        uids: impl IntoIterator<Item = &'a str>,
        explicit: impl IntoIterator<Item = (&'a str, &'a Path)>,
    ) -> CgroupIndex {
        let wanted: HashMap<String, &str> = uids
            .into_iter()
            .map(|uid| (uid.replace('-', "_"), uid))
            .collect();
        let mut index = CgroupIndex::default();
        let mut visited = 0;
        if !wanted.is_empty() {
            self.walk_for_pods(&self.root, 0, &wanted, &mut index, &mut visited);
        }
        for (uid, rel) in explicit {
            let dir = self.root.join(rel.strip_prefix("/").unwrap_or(rel));
            index_subtree(&dir, uid, 0, &mut index, &mut visited);
        }
        debug!(cgroups = index.len(), visited, "cgroup scan done");
        index
    }

    fn walk_for_pods(
        &self,
        dir: &Path,
        depth: usize,
        wanted: &HashMap<String, &str>,
        index: &mut CgroupIndex,
        visited: &mut usize,
    ) {
        if depth > MAX_POD_DEPTH || *visited >= MAX_VISITED {
            return;
        }
        for child in subdirs(dir) {
            *visited += 1;
            let Some(name) = child.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(uid) = pod_uid(name).and_then(|u| wanted.get(&u.replace('-', "_"))) {
                index_subtree(&child, uid, 0, index, visited);
            } else if depth == 0
                || name.starts_with("kubepods")
                || name.contains(".slice")
                || name == "burstable"
                || name == "besteffort"
                || name == "guaranteed"
            {
                // Only descend where kubelet puts pods (and through the slices above them),
                // never into every service's and container's tree.
                self.walk_for_pods(&child, depth + 1, wanted, index, visited);
            }
        }
    }
}

/// Indexes `dir` and its descendants for `uid`.
fn index_subtree(
    dir: &Path,
    uid: &str,
    depth: usize,
    index: &mut CgroupIndex,
    visited: &mut usize,
) {
    let Ok(meta) = fs::metadata(dir) else {
        return;
    };
    index.insert(uid, meta.ino());
    if depth >= MAX_CONTAINER_DEPTH {
        return;
    }
    for child in subdirs(dir) {
        *visited += 1;
        if *visited >= MAX_VISITED {
            return;
        }
        index_subtree(&child, uid, depth + 1, index, visited);
    }
}

fn subdirs(dir: &Path) -> impl Iterator<Item = PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
}

/// The pod uid in a cgroup directory name, in either driver's spelling (systemd's has `_`
/// where the uid has `-`). `None` when the name is not a pod directory.
pub fn pod_uid(name: &str) -> Option<&str> {
    if let Some(uid) = name.strip_prefix("pod") {
        return is_uid(uid).then_some(uid);
    }
    let stem = name.strip_suffix(".slice")?;
    let uid = &stem[stem.rfind("-pod")? + 4..];
    (stem.starts_with("kubepods") && is_uid(uid)).then_some(uid)
}

fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-' || b == b'_'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b8f5c1e-3d2a-4f6b-9c7d-1e2f3a4b5c6d";
    const OTHER: &str = "11111111-2222-3333-4444-555555555555";

    struct TempTree(PathBuf);

    impl TempTree {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("sluice-cgtest-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
        fn mkdir(&self, rel: &str) -> u64 {
            let p = self.0.join(rel);
            fs::create_dir_all(&p).unwrap();
            fs::metadata(&p).unwrap().ino()
        }
    }

    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn recognises_both_drivers_spellings() {
        assert_eq!(pod_uid(&format!("pod{UID}")), Some(UID));
        let systemd = format!("kubepods-burstable-pod{}.slice", UID.replace('-', "_"));
        assert_eq!(pod_uid(&systemd), Some(UID.replace('-', "_").as_str()));
        let guaranteed = format!("kubepods-pod{}.slice", UID.replace('-', "_"));
        assert!(pod_uid(&guaranteed).is_some());
        for not_pod in [
            "kubepods.slice",
            "burstable",
            "podman",
            "cri-containerd-abc.scope",
            "pod1234",
        ] {
            assert_eq!(pod_uid(not_pod), None, "{not_pod}");
        }
    }

    #[test]
    fn cgroupfs_layout_indexes_pod_and_containers() {
        let t = TempTree::new("cgroupfs");
        let pod = t.mkdir(&format!("kubepods/burstable/pod{UID}"));
        let c1 = t.mkdir(&format!("kubepods/burstable/pod{UID}/0123abcd"));
        let c2 = t.mkdir(&format!("kubepods/burstable/pod{UID}/4567ef01"));
        let other = t.mkdir(&format!("kubepods/besteffort/pod{OTHER}/89ab"));
        t.mkdir("system.slice/containerd.service");
        let index = Scanner::new(&t.0).scan([UID], []);
        let mut ids = index.ids(UID).to_vec();
        ids.sort_unstable();
        let mut want = vec![pod, c1, c2];
        want.sort_unstable();
        assert_eq!(ids, want);
        assert!(
            !index.ids(UID).contains(&other),
            "a pod that was not asked for"
        );
        assert!(index.ids(OTHER).is_empty());
    }

    #[test]
    fn systemd_layout_indexes_pod_and_scopes() {
        let t = TempTree::new("systemd");
        let u = UID.replace('-', "_");
        let base =
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice");
        let pod = t.mkdir(&base);
        let c = t.mkdir(&format!("{base}/cri-containerd-0123abcd.scope"));
        let guaranteed = t.mkdir(&format!(
            "kubepods.slice/kubepods-pod{}.slice",
            OTHER.replace('-', "_")
        ));
        let index = Scanner::new(&t.0).scan([UID, OTHER], []);
        assert!(index.ids(UID).contains(&pod));
        assert!(index.ids(UID).contains(&c));
        assert_eq!(index.ids(OTHER), &[guaranteed]);
    }

    #[test]
    fn explicit_paths_index_that_subtree() {
        let t = TempTree::new("explicit");
        let dir = t.mkdir("sluice-tests/pod-a");
        let child = t.mkdir("sluice-tests/pod-a/app");
        let index = Scanner::new(&t.0).scan([], [(UID, Path::new("/sluice-tests/pod-a"))]);
        assert_eq!(index.ids(UID).len(), 2);
        assert!(index.ids(UID).contains(&dir) && index.ids(UID).contains(&child));
    }

    #[test]
    fn a_missing_tree_yields_an_empty_index() {
        let index = Scanner::new("/nonexistent/sluice").scan([UID], [(OTHER, Path::new("x"))]);
        assert!(index.is_empty());
    }
}
