//! Kubernetes: resource types, watchers and the standalone file source, all producing one
//! immutable desired-state [`Snapshot`].

pub mod crds;
