//! Turns [`Inputs`] into a [`Snapshot`]: validates every resource, resolves references,
//! indexes pods and derives the datapath's rules. Pure apart from the policy-id allocator,
//! so every rule about what is accepted is unit-tested here.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use super::{
    cgroups::CgroupIndex,
    crds::{FailureMode, SecretKeyRef, TrafficPolicySpec},
    inputs::{Inputs, Named, ObjectKey, Origin, PodInfo},
    selector,
    snapshot::{
        Budget, Credential, Kind, Policy, Pool, PoolEndpoint, Provider, SYSTEM_NAMESPACES,
        ServiceView, Snapshot, Verdict,
    },
    translate::{self, Dest, RuleAction},
};
use crate::{datapath::intercept::InterceptRule, identity::PodIdentity};

/// Name under which `--intercept` flag rules appear (policy id 0).
pub const FLAG_POLICY: &str = "(flags)";

/// Node-wide facts the build needs, and the one piece of memory across builds: policy ids
/// stay stable for a name, so an unrelated change never rewrites every rule.
#[derive(Debug)]
pub struct Builder {
    node: String,
    agent_namespace: String,
    secret_namespaces: BTreeSet<String>,
    flag_rules: Vec<InterceptRule>,
    ids: BTreeMap<String, u32>,
    next_id: u32,
    version: u64,
}

// === impl Builder ===

impl Builder {
    pub fn new(
        node: impl Into<String>,
        agent_namespace: impl Into<String>,
        secret_namespaces: impl IntoIterator<Item = String>,
        flag_rules: Vec<InterceptRule>,
    ) -> Self {
        Self {
            node: node.into(),
            agent_namespace: agent_namespace.into(),
            secret_namespaces: secret_namespaces.into_iter().collect(),
            flag_rules,
            ids: BTreeMap::new(),
            next_id: 1,
            version: 0,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn build(&mut self, inputs: &Inputs, cgroups: &CgroupIndex, complete: bool) -> Snapshot {
        self.version += 1;
        let mut snap = Snapshot {
            version: self.version,
            complete,
            node: self.node.clone(),
            ..Snapshot::default()
        };
        for r in &inputs.rejected {
            snap.verdicts.push(Verdict {
                kind: kind_of(r.kind),
                name: r.name.clone(),
                origin: r.origin.clone(),
                accepted: Err(r.errors.join("; ")),
                resolved_refs: Ok(()),
                conflicts: Vec::new(),
            });
        }
        self.flag_rules(&mut snap);
        self.policies(inputs, &mut snap);
        budgets(inputs, &mut snap);
        self.providers(inputs, &mut snap);
        self.pools(inputs, &mut snap);
        self.pods(inputs, cgroups, &mut snap);
        services(inputs, &mut snap);
        snap.locality = translate::locality(&inputs.local_pods, |pod| {
            snap.pools
                .values()
                .any(|p| is_member(&p.key, &p.spec.selector.match_labels, pod))
        });
        snap
    }

    fn flag_rules(&self, snap: &mut Snapshot) {
        for rule in &self.flag_rules {
            let dest = Dest::from_intercept_rule(rule);
            snap.intercepts.insert(
                dest,
                RuleAction {
                    policy_id: 0,
                    failure_mode: FailureMode::FailOpen,
                },
            );
        }
    }

    fn policy_id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        self.ids.insert(name.to_owned(), id);
        id
    }

    fn policies(&mut self, inputs: &Inputs, snap: &mut Snapshot) {
        // Policies claim destinations in name order; the first claim wins, later ones are
        // reported as conflicted. Flag rules yield to any policy.
        let mut owners: BTreeMap<Dest, String> = BTreeMap::new();
        for (name, p) in &inputs.policies {
            let mut verdict = verdict(Kind::TrafficPolicy, name, &p.origin);
            if let Err(e) = p.spec.validate() {
                verdict.accepted = Err(e.to_string());
                snap.verdicts.push(verdict);
                continue;
            }
            let id = self.policy_id(name);
            let (dests, missing) = translate::policy_dests(&p.spec, &inputs.services, inputs);
            let mut unresolved: Vec<String> = missing
                .iter()
                .map(|k| format!("Service {k} not found"))
                .collect();
            if let Some(r) = &p.spec.tenant.secret_ref {
                let key = SecretKeyRef {
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                    key: String::new(),
                };
                if let Err(e) = self.secret_known(inputs, &key) {
                    unresolved.push(e);
                }
            }
            let action = RuleAction {
                policy_id: id,
                failure_mode: p.spec.failure_mode,
            };
            for dest in dests {
                match owners.get(&dest) {
                    Some(owner) if owner != name => {
                        verdict
                            .conflicts
                            .push(format!("{dest} is owned by TrafficPolicy {owner}"));
                    }
                    _ => {
                        owners.insert(dest, name.clone());
                        snap.intercepts.insert(dest, action);
                    }
                }
            }
            if !unresolved.is_empty() {
                verdict.resolved_refs = Err(unresolved.join("; "));
            }
            snap.verdicts.push(verdict);
            let policy = self.policy(name, id, p, inputs);
            snap.policies.insert(name.clone(), Arc::new(policy));
        }
    }

    fn policy(&self, name: &str, id: u32, p: &Named<TrafficPolicySpec>, inputs: &Inputs) -> Policy {
        let clients = &p.spec.clients;
        let namespaces = clients.namespace_selector.as_ref().map(|sel| {
            inputs
                .namespaces
                .iter()
                .filter(|(_, labels)| selector::matches(sel, labels))
                .map(|(n, _)| n.clone())
                .collect()
        });
        let excluded_namespaces = if clients.include_system_namespaces {
            BTreeSet::new()
        } else {
            SYSTEM_NAMESPACES
                .iter()
                .map(|s| (*s).to_owned())
                .chain([self.agent_namespace.clone()])
                .collect()
        };
        let secret = super::quota::tenant_secret(&p.spec, inputs, &self.secret_namespaces);
        Policy {
            name: name.to_owned(),
            id,
            generation: generation(&p.origin),
            request: Arc::new(super::quota::request_policy(name, &p.spec, secret)),
            spec: p.spec.clone(),
            namespaces,
            excluded_namespaces,
        }
    }

    /// `Err(reason)` when a referenced Secret cannot be read on this node. An empty `key`
    /// only checks the Secret.
    fn secret_known(&self, inputs: &Inputs, r: &SecretKeyRef) -> Result<Vec<u8>, String> {
        if !self.secret_namespaces.contains(&r.namespace) {
            return Err(format!(
                "Secret {}/{} is in a namespace the agent does not watch (watched: {}); move it \
                 or add the namespace to SLUICE_SECRET_NAMESPACES and grant the agent a Role there",
                r.namespace,
                r.name,
                self.secret_namespaces
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let data = inputs
            .secrets
            .get(&ObjectKey::new(&r.namespace, &r.name))
            .ok_or_else(|| format!("Secret {}/{} not found", r.namespace, r.name))?;
        if r.key.is_empty() {
            return Ok(Vec::new());
        }
        data.0
            .get(&r.key)
            .cloned()
            .ok_or_else(|| format!("Secret {}/{} has no key {:?}", r.namespace, r.name, r.key))
    }

    fn providers(&self, inputs: &Inputs, snap: &mut Snapshot) {
        for (name, p) in &inputs.providers {
            let mut verdict = verdict(Kind::ExternalProvider, name, &p.origin);
            if let Err(e) = p.spec.validate() {
                verdict.accepted = Err(e.to_string());
                snap.verdicts.push(verdict);
                continue;
            }
            let credential = match &p.spec.credentials {
                None => None,
                Some(c) => match self.secret_known(inputs, &c.secret_ref) {
                    Ok(value) => Some(Credential(value)),
                    Err(e) => {
                        verdict.resolved_refs = Err(e);
                        None
                    }
                },
            };
            snap.verdicts.push(verdict);
            snap.providers.insert(
                name.clone(),
                Arc::new(Provider {
                    name: name.clone(),
                    generation: generation(&p.origin),
                    spec: p.spec.clone(),
                    credential,
                }),
            );
        }
    }

    fn pools(&self, inputs: &Inputs, snap: &mut Snapshot) {
        for (key, p) in &inputs.pools {
            let mut verdict = verdict(Kind::InferencePool, &key.to_string(), &p.origin);
            if let Err(e) = p.spec.validate() {
                verdict.accepted = Err(e.to_string());
                snap.verdicts.push(verdict);
                continue;
            }
            let ports = p.spec.ports();
            let endpoints = inputs
                .pool_members
                .get(key)
                .into_iter()
                .flatten()
                .filter(|pod| !pod.terminated && is_member(key, &p.spec.selector.match_labels, pod))
                .flat_map(|pod| {
                    let local = pod.node.as_deref() == Some(self.node.as_str());
                    let ports = &ports;
                    pod.ips.iter().flat_map(move |ip| {
                        ports.iter().map(move |&port| PoolEndpoint {
                            addr: SocketAddr::new(*ip, port),
                            ready: pod.ready,
                            local,
                            gpus: pod.gpus,
                        })
                    })
                })
                .collect();
            snap.verdicts.push(verdict);
            snap.pools.insert(
                key.clone(),
                Arc::new(Pool {
                    key: key.clone(),
                    generation: generation(&p.origin),
                    spec: p.spec.clone(),
                    endpoints,
                }),
            );
        }
    }

    fn pods(&self, inputs: &Inputs, cgroups: &CgroupIndex, snap: &mut Snapshot) {
        for pod in inputs.local_pods.values() {
            if pod.terminated {
                continue;
            }
            let identity = Arc::new(PodIdentity {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                service_account: pod.service_account.clone(),
                labels: pod.labels.clone(),
            });
            for id in cgroups.ids(&pod.uid) {
                snap.pods_by_cgroup.insert(*id, Arc::clone(&identity));
            }
            if !pod.host_network {
                for ip in &pod.ips {
                    snap.pods_by_ip.insert(*ip, Arc::clone(&identity));
                }
            }
        }
    }
}

fn budgets(inputs: &Inputs, snap: &mut Snapshot) {
    for (name, b) in &inputs.budgets {
        let mut verdict = verdict(Kind::TokenBudget, name, &b.origin);
        match b.spec.validate() {
            Err(e) => verdict.accepted = Err(e.to_string()),
            Ok(()) => {
                snap.budgets.insert(
                    name.clone(),
                    Arc::new(Budget {
                        name: name.clone(),
                        generation: generation(&b.origin),
                        spec: b.spec.clone(),
                    }),
                );
            }
        }
        snap.verdicts.push(verdict);
    }
}

fn services(inputs: &Inputs, snap: &mut Snapshot) {
    let mut endpoints: HashMap<ObjectKey, Vec<_>> = HashMap::new();
    for (key, slice) in &inputs.slices {
        endpoints
            .entry(ObjectKey::new(&key.namespace, &slice.service))
            .or_default()
            .extend(
                slice
                    .addresses
                    .iter()
                    .filter(|e| e.ready)
                    .map(|e| (e.ip, e.node.clone())),
            );
    }
    for (key, svc) in &inputs.services {
        snap.services.insert(
            key.clone(),
            Arc::new(ServiceView {
                cluster_ips: svc.cluster_ips.clone(),
                ports: svc.ports.iter().map(|p| p.port).collect(),
                endpoints: endpoints.remove(key).unwrap_or_default(),
            }),
        );
    }
}

/// A pod belongs to a pool when it is in the pool's namespace and carries all its labels.
fn is_member(pool: &ObjectKey, labels: &BTreeMap<String, String>, pod: &PodInfo) -> bool {
    pod.namespace == pool.namespace
        && !labels.is_empty()
        && labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
}

fn verdict(kind: Kind, name: &str, origin: &Origin) -> Verdict {
    Verdict {
        kind,
        name: name.to_owned(),
        origin: origin.clone(),
        accepted: Ok(()),
        resolved_refs: Ok(()),
        conflicts: Vec::new(),
    }
}

fn generation(origin: &Origin) -> Option<i64> {
    match origin {
        Origin::Api { generation } => *generation,
        Origin::File { .. } => None,
    }
}

fn kind_of(kind: &'static str) -> Kind {
    match kind {
        "TrafficPolicy" => Kind::TrafficPolicy,
        "TokenBudget" => Kind::TokenBudget,
        "ExternalProvider" => Kind::ExternalProvider,
        "InferencePool" => Kind::InferencePool,
        other => Kind::Other(other),
    }
}

#[cfg(test)]
mod tests;
