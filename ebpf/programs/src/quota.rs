//! Token budgets enforced at connect (`enforceAt: Connect`): a caller whose tenant has
//! exhausted such a budget gets its new connections to intercepted destinations refused here,
//! before they reach the proxy.
//!
//! The agent names the caller's tenant per (cgroup, policy) in `QUOTA_TENANTS` (only for
//! tenants with a connect-enforced budget) and mirrors each such tenant's state into its
//! `DIMENSION_CONNECT` entry of `QUOTA`. Called on the matched path only, after the agent is
//! known alive (a dead agent's entries are stale; fail-open/closed decides then): one lookup
//! for a caller without connect enforcement, two for one with it.

use aya_ebpf::helpers::generated::bpf_get_current_cgroup_id;
use sluice_common::{
    counters::Counter,
    intercept::InterceptRule,
    quota::{CallerKey, connect_key, refuses_connect},
};

use crate::maps::{QUOTA, QUOTA_TENANTS, count};

/// Whether the caller's connect must be refused for its tenant's budget (counted).
#[inline(always)]
pub fn over_budget(rule: &InterceptRule) -> bool {
    let caller = CallerKey {
        // SAFETY: a helper without memory arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        policy_id: rule.policy_id,
        _pad: 0,
    };
    // SAFETY: the value is copied out before any other map operation.
    let Some(tenant) = (unsafe { QUOTA_TENANTS.get(caller) }).copied() else {
        return false;
    };
    // SAFETY: as above; only the flags are read.
    let refused = unsafe { QUOTA.get(connect_key(tenant)) }.is_some_and(refuses_connect);
    if refused {
        count(Counter::RefusedQuota);
    }
    refused
}
