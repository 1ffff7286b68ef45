//! What a configuration source (the API server or files) delivers: the resources, reduced to
//! what sluice uses, before any validation or indexing.

use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Secret, Service},
    discovery::v1::EndpointSlice,
};

use super::crds::{ExternalProviderSpec, InferencePoolSpec, TokenBudgetSpec, TrafficPolicySpec};

/// Annotation on a Pod (standalone files) giving its cgroup, relative to the cgroup2 mount.
pub const CGROUP_ANNOTATION: &str = "sluice.dev/cgroup";

/// Extended resources that are accelerators, counted as GPUs for locality.
pub const GPU_RESOURCES: &[&str] = &[
    "nvidia.com/gpu",
    "amd.com/gpu",
    "gpu.intel.com/i915",
    "gpu.intel.com/xe",
    "habana.ai/gaudi",
    "aws.amazon.com/neuron",
    "aws.amazon.com/neuroncore",
    "google.com/tpu",
];

/// Where a resource came from, for error messages and status.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// The API server, at this `metadata.generation`.
    Api { generation: Option<i64> },
    /// Document `index` (0-based) of a file.
    File { path: PathBuf, index: usize },
}

/// A cluster-scoped sluice resource as delivered.
#[derive(Clone, Debug, PartialEq)]
pub struct Named<T> {
    pub name: String,
    pub origin: Origin,
    pub spec: T,
}

/// A namespaced object's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

/// A pod, as far as identity, locality and pool membership need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
    pub host_network: bool,
    /// Accelerators requested, summed over the pod's containers.
    pub gpus: u32,
    /// The Ready condition is True.
    pub ready: bool,
    /// Terminal (Succeeded/Failed) pods hold no connections worth naming.
    pub terminated: bool,
    /// Standalone mode: the cgroup (relative to the cgroup2 mount) from
    /// [`CGROUP_ANNOTATION`].
    pub cgroup: Option<PathBuf>,
}

/// A Service: its cluster IPs and TCP ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None`: clients connect to endpoint addresses directly.
    pub headless: bool,
    pub ports: Vec<ServicePort>,
}

/// One TCP port of a Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    /// The endpoints' port when it is a number; named target ports resolve per endpoint slice.
    pub target_port: Option<u16>,
}

/// The endpoints of one EndpointSlice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceInfo {
    /// The Service it belongs to (`kubernetes.io/service-name`).
    pub service: String,
    pub addresses: Vec<Endpoint>,
    /// Port name → number.
    pub ports: Vec<(Option<String>, u16)>,
}

/// One endpoint address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub ready: bool,
    pub node: Option<String>,
}

/// Secret data, never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData(pub BTreeMap<String, Vec<u8>>);

/// Everything a source knows, in one value. Maps are ordered so that builds are deterministic.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs {
    pub policies: BTreeMap<String, Named<TrafficPolicySpec>>,
    pub budgets: BTreeMap<String, Named<TokenBudgetSpec>>,
    pub providers: BTreeMap<String, Named<ExternalProviderSpec>>,
    pub pools: BTreeMap<ObjectKey, Named<InferencePoolSpec>>,
    /// Pods on this node, by uid.
    pub local_pods: BTreeMap<String, PodInfo>,
    /// Members of each pool, on any node (pool key → pods).
    pub pool_members: BTreeMap<ObjectKey, Vec<PodInfo>>,
    pub services: BTreeMap<ObjectKey, ServiceInfo>,
    pub slices: BTreeMap<ObjectKey, SliceInfo>,
    /// Namespace labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub secrets: BTreeMap<ObjectKey, SecretData>,
    /// Documents that failed to parse (standalone) or to convert: reported, not applied.
    pub rejected: Vec<Rejection>,
}

/// A resource that was not applied, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub kind: &'static str,
    pub name: String,
    pub origin: Origin,
    pub errors: Vec<String>,
}

// === impl Origin ===

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Api { .. } => f.write_str("the API server"),
            Self::File { path, index } => write!(f, "{} document {}", path.display(), index + 1),
        }
    }
}

// === impl ObjectKey ===

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === impl SecretData ===

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl From<&Secret> for SecretData {
    fn from(secret: &Secret) -> Self {
        let mut data: BTreeMap<String, Vec<u8>> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        // stringData is write-only on the API server, but standalone files use it.
        for (k, v) in secret.string_data.iter().flatten() {
            data.insert(k.clone(), v.clone().into_bytes());
        }
        Self(data)
    }
}

// === impl PodInfo ===

impl PodInfo {
    /// The parts of a Pod sluice uses; `None` without a uid or name.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        let phase = status.and_then(|s| s.phase.as_deref());
        Some(Self {
            uid: meta.uid.clone()?,
            namespace: meta
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            name: meta.name.clone()?,
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_owned()),
            labels: meta.labels.clone().unwrap_or_default(),
            ips,
            node: spec.and_then(|s| s.node_name.clone()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            gpus: spec.map(gpu_count).unwrap_or(0),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            terminated: matches!(phase, Some("Succeeded" | "Failed")),
            cgroup: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(CGROUP_ANNOTATION))
                .map(PathBuf::from),
        })
    }
}

/// Accelerators requested by the pod's (long-running) containers. Extended resources may be
/// given as limits only (requests then default to limits).
fn gpu_count(spec: &k8s_openapi::api::core::v1::PodSpec) -> u32 {
    let mut total: u64 = 0;
    for c in &spec.containers {
        let Some(res) = c.resources.as_ref() else {
            continue;
        };
        for name in GPU_RESOURCES {
            let q = res
                .requests
                .as_ref()
                .and_then(|r| r.get(*name))
                .or_else(|| res.limits.as_ref().and_then(|l| l.get(*name)));
            if let Some(n) = q.and_then(|q| q.0.parse::<u64>().ok()) {
                total = total.saturating_add(n);
            }
        }
    }
    u32::try_from(total).unwrap_or(u32::MAX)
}

// === impl ServiceInfo ===

impl ServiceInfo {
    pub fn from_service(svc: &Service) -> Self {
        let spec = svc.spec.as_ref();
        let mut ips: Vec<&String> = spec
            .and_then(|s| s.cluster_ips.as_ref())
            .into_iter()
            .flatten()
            .collect();
        if ips.is_empty()
            && let Some(ip) = spec.and_then(|s| s.cluster_ip.as_ref())
        {
            ips.push(ip);
        }
        let headless = ips.iter().any(|ip| ip.as_str() == "None");
        Self {
            cluster_ips: ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
            headless,
            ports: spec
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                .filter_map(|p| {
                    Some(ServicePort {
                        name: p.name.clone(),
                        port: u16::try_from(p.port).ok().filter(|&p| p != 0)?,
                        target_port: match &p.target_port {
                            Some(
                                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n),
                            ) => u16::try_from(*n).ok(),
                            None => u16::try_from(p.port).ok(),
                            Some(_) => None,
                        },
                    })
                })
                .collect(),
        }
    }
}

// === impl SliceInfo ===

impl SliceInfo {
    /// `None` for slices that belong to no Service.
    pub fn from_slice(slice: &EndpointSlice) -> Option<Self> {
        let service = slice
            .metadata
            .labels
            .as_ref()?
            .get("kubernetes.io/service-name")?
            .clone();
        let addresses = slice
            .endpoints
            .iter()
            .flat_map(|e| {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                e.addresses.iter().filter_map(move |a| {
                    Some(Endpoint {
                        ip: a.parse().ok()?,
                        ready,
                        node: e.node_name.clone(),
                    })
                })
            })
            .collect();
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| Some((p.name.clone(), u16::try_from(p.port?).ok()?)))
            .collect();
        Some(Self {
            service,
            addresses,
            ports,
        })
    }
}

/// Namespace labels.
pub fn namespace_labels(ns: &Namespace) -> BTreeMap<String, String> {
    ns.metadata.labels.clone().unwrap_or_default()
}
