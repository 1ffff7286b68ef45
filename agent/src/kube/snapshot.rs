//! The desired state: one immutable value, built from a source's [`Inputs`] and swapped in
//! whole. Readers never lock; they load an `Arc` and keep a consistent view for as long as
//! they hold it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{
    crds::{ExternalProviderSpec, InferencePoolSpec, TokenBudgetSpec, TrafficPolicySpec},
    inputs::{ObjectKey, Origin},
    translate::{Dest, LocalityEntry, RuleAction},
};
use crate::identity::{Identity, PodIdentity};

/// Namespaces a policy leaves alone unless `includeSystemNamespaces` is set (sluice's own
/// namespace is added from the configuration).
pub const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// The whole desired state.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every published snapshot.
    pub version: u64,
    /// False until the source has delivered its first complete state (initial lists done,
    /// or files read): an empty snapshot then means "nothing yet", not "nothing configured".
    pub complete: bool,
    pub node: String,
    /// Accepted policies, by name.
    pub policies: BTreeMap<String, Arc<Policy>>,
    /// Accepted budgets, by name.
    pub budgets: BTreeMap<String, Arc<Budget>>,
    /// Accepted providers, by name.
    pub providers: BTreeMap<String, Arc<Provider>>,
    /// Accepted pools with their endpoints.
    pub pools: BTreeMap<ObjectKey, Arc<Pool>>,
    /// cgroup id (container or pod cgroup inode) → the pod on this node.
    pub pods_by_cgroup: HashMap<u64, Arc<PodIdentity>>,
    /// Pod IP → the pod on this node.
    pub pods_by_ip: HashMap<IpAddr, Arc<PodIdentity>>,
    /// Services with their cluster IPs, ports and endpoints.
    pub services: BTreeMap<ObjectKey, Arc<ServiceView>>,
    /// The datapath's interception rules.
    pub intercepts: BTreeMap<Dest, RuleAction>,
    /// The datapath's GPU-pod locality entries.
    pub locality: BTreeMap<IpAddr, LocalityEntry>,
    /// Every resource's outcome on this node (for status and logs).
    pub verdicts: Vec<Verdict>,
}

/// An accepted TrafficPolicy.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub id: u32,
    pub generation: Option<i64>,
    pub spec: TrafficPolicySpec,
    /// Namespaces whose pods the policy applies to (`None`: all but the system ones, unless
    /// included).
    pub namespaces: Option<BTreeSet<String>>,
    pub excluded_namespaces: BTreeSet<String>,
    /// The policy as the proxy applies it (tenant key with its API keys resolved, inspection).
    pub request: Arc<crate::policy::RequestPolicy>,
}

/// An accepted TokenBudget.
#[derive(Debug)]
pub struct Budget {
    pub name: String,
    pub generation: Option<i64>,
    pub spec: TokenBudgetSpec,
}

/// An accepted ExternalProvider and its resolved credential.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub generation: Option<i64>,
    pub spec: ExternalProviderSpec,
    pub credential: Option<Credential>,
}

/// A secret value; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(pub Vec<u8>);

/// An accepted InferencePool and its endpoints.
#[derive(Debug)]
pub struct Pool {
    pub key: ObjectKey,
    pub generation: Option<i64>,
    pub spec: InferencePoolSpec,
    pub endpoints: Vec<PoolEndpoint>,
}

/// One `podIP:port` of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolEndpoint {
    pub addr: SocketAddr,
    pub ready: bool,
    /// On this node.
    pub local: bool,
    pub gpus: u32,
}

/// A Service as routing sees it.
#[derive(Debug, Default)]
pub struct ServiceView {
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<u16>,
    /// Ready endpoint addresses with the node they run on.
    pub endpoints: Vec<(IpAddr, Option<String>)>,
}

/// The kinds a verdict can be about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    TrafficPolicy,
    TokenBudget,
    ExternalProvider,
    InferencePool,
    Other(&'static str),
}

/// What this node made of one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub kind: Kind,
    /// `name`, or `namespace/name` for namespaced kinds.
    pub name: String,
    pub origin: Origin,
    /// `Err(message)`: not applied; the message names the field.
    pub accepted: Result<(), String>,
    /// `Err(message)`: a referenced object is missing (the resource may still be applied).
    pub resolved_refs: Result<(), String>,
    /// Targets owned by another resource.
    pub conflicts: Vec<String>,
}

// === impl Snapshot ===

impl Snapshot {
    /// The caller behind a cgroup id.
    pub fn identify(&self, cgroup_id: u64) -> Identity {
        Identity {
            cgroup_id,
            pod: self.pods_by_cgroup.get(&cgroup_id).cloned(),
        }
    }

    /// The policy whose rule intercepted a connection to `dst`: the longest matching prefix on
    /// the destination port, as the datapath's LPM lookup picks it.
    pub fn policy_for(&self, dst: SocketAddr) -> Option<&Arc<Policy>> {
        let action = self
            .intercepts
            .iter()
            .filter(|(d, _)| d.port == dst.port() && (d.any_addr || d.cidr.contains(dst.ip())))
            .max_by_key(|(d, _)| {
                if d.any_addr {
                    0
                } else {
                    u16::from(d.cidr.prefix_len) + 1
                }
            })?
            .1;
        self.policies.values().find(|p| p.id == action.policy_id)
    }

    pub fn verdict(&self, kind: Kind, name: &str) -> Option<&Verdict> {
        self.verdicts
            .iter()
            .find(|v| v.kind == kind && v.name == name)
    }
}

// === impl Policy ===

impl Policy {
    /// Whether the policy covers this caller. Callers without a known pod are host processes
    /// (or pods the cache has not seen yet) and are covered only with `includeHostNetwork`.
    pub fn applies_to(&self, identity: &Identity) -> bool {
        let Some(pod) = &identity.pod else {
            return self.spec.clients.include_host_network;
        };
        if self.excluded_namespaces.contains(&pod.namespace) {
            return false;
        }
        self.namespaces
            .as_ref()
            .is_none_or(|set| set.contains(&pod.namespace))
    }
}

// === impl Credential ===

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential(<{} bytes redacted>)", self.0.len())
    }
}

// === impl Kind ===

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::TrafficPolicy => "TrafficPolicy",
            Self::TokenBudget => "TokenBudget",
            Self::ExternalProvider => "ExternalProvider",
            Self::InferencePool => "InferencePool",
            Self::Other(k) => k,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
