//! Who pays for a request: the tenant, derived from the caller's identity as the datapath and
//! the pod cache report it (no application change), or from its API key.
//!
//! Callers that cannot be named get documented fallback tenants, never an error: they start
//! with `_`, which no Kubernetes namespace, service account or label value can (names are
//! DNS-1123 labels or subdomains, label values begin with an alphanumeric), so a fallback never
//! collides with a real tenant.

use std::borrow::Cow;

use sluice_common::quota::fnv1a64;

use super::config::TenantKey;
use crate::identity::{Identity, PodIdentity};

/// The tenant of a caller whose cgroup belongs to no known pod (a host process, or a pod the
/// cache has not seen yet).
pub const UNIDENTIFIED: &str = "_unidentified";
/// The tenant of pods that lack the label a `PodLabel` key names.
pub const UNLABELED: &str = "_unlabeled";
/// The tenant that new tenants share once `max_instances` budget instances exist.
pub const OVERFLOW: &str = "_overflow";

/// A tenant's name and its stable id ([`fnv1a64`] of the name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant<'a> {
    pub name: Cow<'a, str>,
    pub id: u64,
}

// === impl Tenant ===

impl<'a> Tenant<'a> {
    pub fn new(name: impl Into<Cow<'a, str>>) -> Self {
        let name = name.into();
        let id = fnv1a64(name.as_bytes());
        Self { name, id }
    }

    /// Derives the tenant of one request.
    ///
    /// `ApiKey` maps a known key to its tenant; a request without a key, or with a key that is
    /// not in the map, is named by the fallback key (the key itself is never a tenant name: it
    /// would leak into metrics and the QUOTA map).
    pub fn derive(key: &'a TenantKey, identity: &'a Identity, api_key: Option<&str>) -> Self {
        match key {
            TenantKey::ApiKey { keys, fallback } => {
                match api_key.and_then(|k| keys.tenant(k.trim())) {
                    Some(tenant) => Tenant::new(tenant),
                    None => Tenant::derive(fallback, identity, None),
                }
            }
            TenantKey::Namespace => Tenant::of_pod(identity, |pod| pod.namespace.as_str().into()),
            TenantKey::ServiceAccount => Tenant::of_pod(identity, |pod| {
                // Kubernetes fills in "default" when a pod names none.
                let sa = match pod.service_account.as_str() {
                    "" => "default",
                    sa => sa,
                };
                format!("{}/{sa}", pod.namespace).into()
            }),
            TenantKey::PodLabel { label } => {
                Tenant::of_pod(identity, |pod| match pod.labels.get(label) {
                    Some(value) if !value.is_empty() => value.as_str().into(),
                    _ => UNLABELED.into(),
                })
            }
        }
    }

    fn of_pod(identity: &'a Identity, name: impl FnOnce(&'a PodIdentity) -> Cow<'a, str>) -> Self {
        match identity.pod.as_deref() {
            Some(pod) => Tenant::new(name(pod)),
            None => Tenant::new(UNIDENTIFIED),
        }
    }

    pub fn into_owned(self) -> Tenant<'static> {
        Tenant {
            name: Cow::Owned(self.name.into_owned()),
            id: self.id,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use super::*;
    use crate::quota::config::ApiKeys;

    fn pod() -> Identity {
        Identity {
            cgroup_id: 7,
            pod: Some(Arc::new(PodIdentity {
                namespace: "ml".into(),
                name: "client-0".into(),
                service_account: "trainer".into(),
                labels: BTreeMap::from([("team".into(), "vision".into())]),
            })),
        }
    }

    fn host() -> Identity {
        Identity {
            cgroup_id: 1,
            pod: None,
        }
    }

    fn name(key: &TenantKey, id: &Identity, api_key: Option<&str>) -> String {
        let t = Tenant::derive(key, id, api_key);
        assert_eq!(t.id, fnv1a64(t.name.as_bytes()));
        t.name.into_owned()
    }

    #[test]
    fn every_key_type_names_the_tenant() {
        let label = TenantKey::PodLabel {
            label: "team".into(),
        };
        assert_eq!(name(&TenantKey::Namespace, &pod(), None), "ml");
        assert_eq!(name(&TenantKey::ServiceAccount, &pod(), None), "ml/trainer");
        assert_eq!(name(&label, &pod(), None), "vision");

        let keys = TenantKey::ApiKey {
            keys: ApiKeys::new([("sk-a".into(), "team-a".into())]),
            fallback: Box::new(TenantKey::ServiceAccount),
        };
        assert_eq!(name(&keys, &pod(), Some("sk-a")), "team-a");
        assert_eq!(name(&keys, &pod(), Some(" sk-a ")), "team-a");
        assert_eq!(name(&keys, &pod(), Some("sk-unknown")), "ml/trainer");
        assert_eq!(name(&keys, &pod(), None), "ml/trainer");
        assert_eq!(name(&keys, &host(), Some("sk-a")), "team-a");
    }

    #[test]
    fn callers_without_a_name_get_the_documented_fallbacks() {
        for key in [
            TenantKey::Namespace,
            TenantKey::ServiceAccount,
            TenantKey::PodLabel {
                label: "team".into(),
            },
        ] {
            assert_eq!(name(&key, &host(), None), UNIDENTIFIED);
        }
        let other = TenantKey::PodLabel {
            label: "owner".into(),
        };
        assert_eq!(name(&other, &pod(), None), UNLABELED);

        let mut no_sa = pod();
        if let Some(p) = no_sa.pod.as_mut() {
            Arc::make_mut(p).service_account.clear();
        }
        assert_eq!(name(&TenantKey::ServiceAccount, &no_sa, None), "ml/default");
    }
}
