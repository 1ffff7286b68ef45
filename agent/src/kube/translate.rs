//! Desired datapath state derived from a snapshot's resources: the `INTERCEPT` rules and the
//! GPU-pod `LOCALITY` entries. Pure functions; the reconciler writes their diffs.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use crate::datapath::intercept::{InterceptRule, Target};

use super::{
    crds::{Cidr, FailureMode},
    inputs::{Inputs, ObjectKey, PodInfo, ServiceInfo},
};

/// One intercepted destination: an address range (one address for a ClusterIP) on one port.
/// Both families are represented; the datapath sink maps what it supports (IPv4 today, see
/// [`Dest::to_intercept_rule`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dest {
    pub cidr: Cidr,
    /// 0 never occurs: validation rejects it.
    pub port: u16,
    /// "Any address on this port" (`targets.ports`), matched by prefix length 0.
    pub any_addr: bool,
}

/// What a matching rule tells the datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleAction {
    /// Stable id of the policy that owns the rule (counters, `sluice inspect`).
    pub policy_id: u32,
    pub failure_mode: FailureMode,
}

/// The policy's rules, and the destinations another policy already owned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterceptPlan {
    pub rules: BTreeMap<Dest, RuleAction>,
    /// Policy name → destinations it asked for but an earlier policy (by name) owns.
    pub conflicts: BTreeMap<String, Vec<(Dest, String)>>,
    /// Policy name → Services it names that do not exist (yet).
    pub missing_services: BTreeMap<String, Vec<ObjectKey>>,
}

/// A `LOCALITY` value: the GPUs of a model-serving pod on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocalityEntry {
    pub gpus: u32,
    pub flags: u32,
}

/// [`LocalityEntry::flags`] bits, as the datapath's `LOCALITY` map stores them.
pub use sluice_common::locality::{LOCALITY_POOL_MEMBER, LOCALITY_READY};

// === impl Dest ===

impl Dest {
    pub fn new(cidr: Cidr, port: u16) -> Self {
        Self {
            cidr,
            port,
            any_addr: false,
        }
    }

    pub fn any(port: u16) -> Self {
        Self {
            cidr: Cidr {
                addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                prefix_len: 0,
            },
            port,
            any_addr: true,
        }
    }

    /// The datapath rule for this destination (IPv4, IPv6, or any address on the port).
    pub fn to_intercept_rule(&self) -> InterceptRule {
        let target = if self.any_addr {
            Target::Any
        } else {
            Target::Net {
                addr: self.cidr.addr,
                prefix_len: self.cidr.prefix_len,
            }
        };
        InterceptRule {
            target,
            port: self.port,
        }
    }

    /// The destination a datapath rule (a `--intercept` flag) names.
    pub fn from_intercept_rule(rule: &InterceptRule) -> Self {
        match rule.target {
            Target::Any => Self::any(rule.port),
            Target::Net { addr, prefix_len } => Self::new(Cidr { addr, prefix_len }, rule.port),
        }
    }
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.any_addr {
            write!(f, "*:{}", self.port)
        } else {
            write!(f, "{}:{}", self.cidr, self.port)
        }
    }
}

/// The destinations of one policy, in the order they are claimed.
pub fn policy_dests(
    spec: &super::crds::TrafficPolicySpec,
    services: &BTreeMap<ObjectKey, ServiceInfo>,
    inputs: &Inputs,
) -> (Vec<Dest>, Vec<ObjectKey>) {
    let mut dests = Vec::new();
    let mut missing = Vec::new();
    for target in &spec.targets.services {
        let key = ObjectKey::new(&target.namespace, &target.name);
        let Some(svc) = services.get(&key) else {
            missing.push(key);
            continue;
        };
        let ports: Vec<u16> = if target.ports.is_empty() {
            svc.ports.iter().map(|p| p.port).collect()
        } else {
            target.ports.clone()
        };
        if svc.headless {
            // Clients of a headless Service connect to the endpoints themselves.
            for ip in headless_endpoints(&key, inputs) {
                for (port, _) in headless_ports(svc, &ports) {
                    dests.push(Dest::new(host(ip), port));
                }
            }
        } else {
            for ip in &svc.cluster_ips {
                for &port in &ports {
                    dests.push(Dest::new(host(*ip), port));
                }
            }
        }
    }
    for c in &spec.targets.cidrs {
        // Validated before translation; an unparsable CIDR never reaches here.
        if let Ok(cidr) = Cidr::parse(&c.cidr) {
            dests.extend(c.ports.iter().map(|&p| Dest::new(cidr, p)));
        }
    }
    dests.extend(spec.targets.ports.iter().map(|&p| Dest::any(p)));
    (dests, missing)
}

fn host(ip: IpAddr) -> Cidr {
    Cidr {
        addr: ip,
        prefix_len: if ip.is_ipv4() { 32 } else { 128 },
    }
}

fn headless_endpoints(service: &ObjectKey, inputs: &Inputs) -> BTreeSet<IpAddr> {
    inputs
        .slices
        .iter()
        .filter(|(k, s)| k.namespace == service.namespace && s.service == service.name)
        .flat_map(|(_, s)| s.addresses.iter().map(|e| e.ip))
        .collect()
}

/// For a headless Service, connections go to the target port.
fn headless_ports(svc: &ServiceInfo, wanted: &[u16]) -> Vec<(u16, u16)> {
    svc.ports
        .iter()
        .filter(|p| wanted.contains(&p.port))
        .map(|p| (p.target_port.unwrap_or(p.port), p.port))
        .collect()
}

/// Locality entries for model-serving pods on this node: pool members and pods that request
/// accelerators, keyed by each of their IPs.
pub fn locality(
    local_pods: &BTreeMap<String, PodInfo>,
    is_pool_member: impl Fn(&PodInfo) -> bool,
) -> BTreeMap<IpAddr, LocalityEntry> {
    let mut out = BTreeMap::new();
    for pod in local_pods.values() {
        if pod.terminated || pod.host_network {
            continue;
        }
        let member = is_pool_member(pod);
        if !member && pod.gpus == 0 {
            continue;
        }
        let mut flags = 0;
        if member {
            flags |= LOCALITY_POOL_MEMBER;
        }
        if pod.ready {
            flags |= LOCALITY_READY;
        }
        for ip in &pod.ips {
            out.insert(
                *ip,
                LocalityEntry {
                    gpus: pod.gpus,
                    flags,
                },
            );
        }
    }
    out
}
