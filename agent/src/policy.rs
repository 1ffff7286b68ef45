//! What the traffic policy behind an intercepted connection asks of the proxy for each
//! request: whether it applies to the caller at all, how the caller's tenant is derived, and how
//! much of a body is inspected. The seam between the configuration (which knows the policies)
//! and the proxy (which applies them); the proxy never sees a Kubernetes type.

use std::{net::SocketAddr, sync::Arc};

use crate::{identity::Identity, quota::TenantKey};

/// One policy as the proxy applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestPolicy {
    /// The policy's name (logs).
    pub name: String,
    /// How a request's tenant is derived.
    pub tenant: TenantKey,
    pub inspection: Inspection,
}

/// How much of an inference body the proxy reads, and what happens to a larger one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inspection {
    pub max_body_bytes: usize,
    pub oversize: Oversize,
}

/// What happens to an inference body larger than [`Inspection::max_body_bytes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Oversize {
    /// 413.
    #[default]
    Reject,
    /// Forwarded uninspected (marked `x-sluice-inspection: skipped`, counted), still metered
    /// from its size, the model when the inspected part names it, and the response's usage.
    Passthrough,
}

/// The policy decision for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No policy owns the destination (a `--intercept` flag rule, or no configuration source):
    /// the proxy's own defaults apply.
    Defaults,
    /// The policy owns the destination and covers this caller.
    Apply(Arc<RequestPolicy>),
    /// A policy owns the destination but its clients selector leaves this caller out: the
    /// request is proxied unchanged, uninspected and unmetered.
    NotCovered,
}

/// Answers [`Decision`]s from the current configuration. Implementations never block: the
/// request path reads an atomically swapped snapshot.
pub trait PolicySource: Send + Sync + 'static {
    /// Changes whenever any decision may have changed (the configuration's version), so a
    /// connection can keep its decision until then.
    fn generation(&self) -> u64;

    /// The decision for a request to `dst` (the original destination) from `identity`.
    fn decide(&self, dst: SocketAddr, identity: &Identity) -> Decision;
}

/// No configuration source: every request gets the proxy's defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPolicies;

impl PolicySource for NoPolicies {
    fn generation(&self) -> u64 {
        0
    }

    fn decide(&self, _: SocketAddr, _: &Identity) -> Decision {
        Decision::Defaults
    }
}
