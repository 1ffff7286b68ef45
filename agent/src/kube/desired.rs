//! What the datapath should hold for one snapshot: the interception rules, the cgroups of
//! system pods (excluded unless a policy opts in), and the locality of model-serving pods.
//!
//! The agent applies it through the datapath's transactional updates, so a configuration that
//! does not fit a map is rejected as a whole (named, counted) and the previous state stays.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::datapath::{FailureMode as DatapathFailureMode, Rule};

use super::{Snapshot, crds::FailureMode, snapshot::SYSTEM_NAMESPACES, translate::LocalityEntry};

/// How rules that come from `--intercept` flags (policy id 0) behave: the flags say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlagRuleSettings {
    pub failure_mode: DatapathFailureMode,
    pub include_system: bool,
    pub include_host_network: bool,
}

/// The datapath's desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatapathState {
    pub rules: Vec<Rule>,
    /// cgroup ids of pods in system namespaces (kube-system, … and the agent's own).
    pub system_cgroups: BTreeSet<u64>,
    pub locality: BTreeMap<IpAddr, LocalityEntry>,
}

/// The datapath state for `snap`. `agent_namespace` is sluice's own namespace, treated as a
/// system namespace.
pub fn datapath_state(
    snap: &Snapshot,
    agent_namespace: &str,
    flags: FlagRuleSettings,
) -> DatapathState {
    let policies: BTreeMap<u32, _> = snap.policies.values().map(|p| (p.id, p)).collect();
    let rules = snap
        .intercepts
        .iter()
        .map(|(dest, action)| {
            let rule = Rule::new(dest.to_intercept_rule(), action.policy_id);
            match policies.get(&action.policy_id) {
                Some(policy) => Rule {
                    failure_mode: match action.failure_mode {
                        FailureMode::FailOpen => DatapathFailureMode::FailOpen,
                        FailureMode::FailClosed => DatapathFailureMode::FailClosed,
                    },
                    include_system: policy.spec.clients.include_system_namespaces,
                    include_host_network: policy.spec.clients.include_host_network,
                    ..rule
                },
                // Not a policy: the `--intercept` flags' pseudo-policy.
                None => Rule {
                    failure_mode: flags.failure_mode,
                    include_system: flags.include_system,
                    include_host_network: flags.include_host_network,
                    ..rule
                },
            }
        })
        .collect();
    let system_cgroups = snap
        .pods_by_cgroup
        .iter()
        .filter(|(_, pod)| {
            SYSTEM_NAMESPACES.contains(&pod.namespace.as_str()) || pod.namespace == agent_namespace
        })
        .map(|(&id, _)| id)
        .collect();
    DatapathState {
        rules,
        system_cgroups,
        locality: snap.locality.clone(),
    }
}
