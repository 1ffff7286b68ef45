//! The thin translation from sluice's resources to the quota engine's and the proxy's own
//! types (ztunnel style): `TokenBudget` -> [`BudgetConfig`], a `TrafficPolicy`'s tenant source
//! and inspection limits -> [`RequestPolicy`], budget usage for status, and the callers connect4
//! may refuse for a budget enforced at connect.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
};

use sluice_common::quota::{CallerKey, fnv1a64};

use super::{
    Store,
    crds::{
        EnforcePoint, Oversize as OversizeSpec, Scope as ScopeSpec, TenantSource, TokenBudgetSpec,
        TrafficPolicySpec, status::BudgetUsage,
    },
    inputs::{Inputs, ObjectKey},
    snapshot::Snapshot,
    status::UsageSource,
};
use crate::{
    identity::Identity,
    policy::{Decision, Inspection, Oversize, PolicySource, RequestPolicy},
    quota::{
        ApiKeys, BudgetConfig, EnforceAt, LimitConfig, Quota, Scope, TenantKey, tenant::Tenant,
        usage::BudgetCounts,
    },
};

/// The budgets of a snapshot, in name order. A budget whose window the engine cannot represent
/// (validation accepts only representable ones, so this does not happen) is left out.
pub fn budgets(snapshot: &Snapshot) -> Vec<BudgetConfig> {
    snapshot
        .budgets
        .values()
        .filter_map(|b| budget(&b.name, &b.spec))
        .collect()
}

/// One `TokenBudget` as the engine applies it.
pub fn budget(name: &str, spec: &TokenBudgetSpec) -> Option<BudgetConfig> {
    let limits = spec
        .limits
        .iter()
        .map(|l| {
            Some(LimitConfig {
                window: l.window.parse().ok()?,
                input_tokens: l.input_tokens,
                output_tokens: l.output_tokens,
                total_tokens: l.total_tokens,
                requests: l.requests,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(BudgetConfig {
        name: name.to_owned(),
        tenants: spec.tenants.clone(),
        models: spec.models.clone(),
        per_model: spec.per_model,
        limits,
        scope: match spec.scope {
            ScopeSpec::Node => Scope::Node,
            ScopeSpec::Cluster => Scope::Cluster,
        },
        enforce_at: match spec.enforce_at {
            EnforcePoint::Proxy => EnforceAt::Proxy,
            EnforcePoint::Connect => EnforceAt::Connect,
        },
        default_max_tokens: spec.default_max_tokens,
    })
}

/// A policy as the proxy applies it. `secret` is the tenant secret's data when the policy
/// maps API keys (source `ApiKey`) and the Secret is readable on this node.
pub fn request_policy(
    name: &str,
    spec: &TrafficPolicySpec,
    secret: Option<&BTreeMap<String, Vec<u8>>>,
) -> RequestPolicy {
    RequestPolicy {
        name: name.to_owned(),
        tenant: tenant_key(spec, secret),
        inspection: Inspection {
            max_body_bytes: usize::try_from(spec.inspection.max_body_bytes).unwrap_or(usize::MAX),
            oversize: match spec.inspection.oversize {
                OversizeSpec::Reject => Oversize::Reject,
                OversizeSpec::Passthrough => Oversize::Passthrough,
            },
        },
    }
}

/// The policy's tenant key. `ApiKey`: the Secret's keys are tenant names and its values their
/// API keys; a request without a known key is named by its namespace (the default source).
fn tenant_key(spec: &TrafficPolicySpec, secret: Option<&BTreeMap<String, Vec<u8>>>) -> TenantKey {
    match spec.tenant.source {
        TenantSource::Namespace => TenantKey::Namespace,
        TenantSource::ServiceAccount => TenantKey::ServiceAccount,
        TenantSource::PodLabel => TenantKey::PodLabel {
            label: spec.tenant.label.clone().unwrap_or_default(),
        },
        TenantSource::ApiKey => {
            let keys = secret.into_iter().flatten().filter_map(|(tenant, key)| {
                // A key that is not text can never match a header value.
                let key = std::str::from_utf8(key).ok()?.trim();
                (!key.is_empty()).then(|| (key.to_owned(), tenant.clone()))
            });
            TenantKey::ApiKey {
                keys: ApiKeys::new(keys),
                fallback: Box::new(TenantKey::Namespace),
            }
        }
    }
}

/// The Secret a policy's `ApiKey` tenant source names, when the agent may read it.
pub fn tenant_secret<'a>(
    spec: &TrafficPolicySpec,
    inputs: &'a Inputs,
    readable: &BTreeSet<String>,
) -> Option<&'a BTreeMap<String, Vec<u8>>> {
    let r = spec.tenant.secret_ref.as_ref()?;
    if !readable.contains(&r.namespace) {
        return None;
    }
    inputs
        .secrets
        .get(&ObjectKey::new(&r.namespace, &r.name))
        .map(|s| &s.0)
}

/// `QUOTA_TENANTS`: every cgroup of every pod on this node, under every policy that covers it,
/// whose tenant (as that policy derives it) has a budget enforced at connect. API keys are not
/// known at connect time: an `ApiKey` policy names callers by its fallback key here.
pub fn connect_callers(snapshot: &Snapshot, budgets: &[BudgetConfig]) -> BTreeMap<CallerKey, u64> {
    let enforced: Vec<&BudgetConfig> = budgets
        .iter()
        .filter(|b| b.enforce_at == EnforceAt::Connect)
        .collect();
    let mut out = BTreeMap::new();
    if enforced.is_empty() {
        return out;
    }
    for policy in snapshot.policies.values() {
        let key = match &policy.request.tenant {
            TenantKey::ApiKey { fallback, .. } => fallback.as_ref(),
            key => key,
        };
        for (&cgroup_id, pod) in &snapshot.pods_by_cgroup {
            let identity = Identity {
                cgroup_id,
                pod: Some(Arc::clone(pod)),
            };
            if !policy.applies_to(&identity) {
                continue;
            }
            let tenant = Tenant::derive(key, &identity, None);
            if enforced
                .iter()
                .any(|b| b.tenants.is_empty() || b.tenants.iter().any(|t| *t == tenant.name))
            {
                let caller = CallerKey {
                    cgroup_id,
                    policy_id: policy.id,
                    _pad: 0,
                };
                out.insert(caller, fnv1a64(tenant.name.as_bytes()));
            }
        }
    }
    out
}

/// [`PolicySource`] over the configuration store.
#[derive(Clone, Debug)]
pub struct SnapshotPolicies {
    store: Store,
}

impl SnapshotPolicies {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl PolicySource for SnapshotPolicies {
    fn generation(&self) -> u64 {
        self.store.version()
    }

    fn decide(&self, dst: SocketAddr, identity: &Identity) -> Decision {
        let snapshot = self.store.load();
        match snapshot.policy_for(dst) {
            None => Decision::Defaults,
            Some(p) if p.applies_to(identity) => Decision::Apply(Arc::clone(&p.request)),
            Some(_) => Decision::NotCovered,
        }
    }
}

/// Budget usage for status, from the engine.
impl UsageSource for Quota {
    fn usage(&self, budget: &str) -> Vec<BudgetUsage> {
        self.usage(budget)
            .into_iter()
            .map(|c: BudgetCounts| BudgetUsage {
                tenant: c.tenant,
                model: c.model,
                window: c.window.map(|w| w.to_string()).unwrap_or_default(),
                input_tokens: c.input_tokens,
                output_tokens: c.output_tokens,
                total_tokens: c.total_tokens,
                requests: c.requests,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
