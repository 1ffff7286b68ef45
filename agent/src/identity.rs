//! Who made an intercepted connection and where it was going: the meeting point of the
//! datapath (which records it), the Kubernetes pod cache (which names the caller) and the
//! proxy (which acts on it).

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

/// What the datapath recorded for one intercepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interception {
    /// Where the client was connecting before connect4 rewrote the destination.
    pub original_dst: SocketAddr,
    /// The caller's cgroup v2 id (`bpf_get_current_cgroup_id()`, the directory's inode).
    pub cgroup_id: u64,
}

/// Recovers the [`Interception`] behind an accepted connection from its addresses.
///
/// `peer` is the client's address as the proxy sees it, `local` the proxy's own address of
/// that connection. `None` means the connection was not intercepted (a direct connect to the
/// proxy port) or its record is gone (LRU eviction): the proxy must refuse it, never guess.
pub trait InterceptionSource: Send + Sync + 'static {
    fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Option<Interception>;
}

/// The pod behind a cgroup, as the node's pod cache knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
}

/// The caller of one request. `pod` is `None` when the cgroup belongs to no known pod (a host
/// process in standalone mode, or a pod the cache has not seen yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub cgroup_id: u64,
    pub pod: Option<Arc<PodIdentity>>,
}

/// Maps a cgroup id to the pod it belongs to. Implemented by the Kubernetes pod cache and by
/// standalone configuration.
pub trait IdentitySource: Send + Sync + 'static {
    fn identify(&self, cgroup_id: u64) -> Identity;
}

/// No pod cache: the caller is known by its cgroup id alone (standalone mode, or until the
/// Kubernetes pod cache is wired in).
#[derive(Clone, Copy, Debug, Default)]
pub struct CgroupOnly;

impl IdentitySource for CgroupOnly {
    fn identify(&self, cgroup_id: u64) -> Identity {
        Identity {
            cgroup_id,
            pod: None,
        }
    }
}
