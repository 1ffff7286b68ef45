//! Watchers (kube-rs reflectors).
