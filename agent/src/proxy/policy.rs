//! The policy decision of each request on a connection: looked up once per connection and
//! again only when the configuration changed (a new snapshot), so the common request pays one
//! atomic load and an uncontended per-connection lock, never a walk over the rules.

use std::{
    net::SocketAddr,
    sync::{Mutex, PoisonError},
};

use crate::{
    identity::Identity,
    policy::{Decision, PolicySource},
};

/// A connection's cached decision.
#[derive(Debug)]
pub struct ConnPolicy {
    cached: Mutex<(u64, Decision)>,
}

// === impl ConnPolicy ===

impl ConnPolicy {
    pub fn new(source: &dyn PolicySource, dst: SocketAddr, identity: &Identity) -> Self {
        let generation = source.generation();
        Self {
            cached: Mutex::new((generation, source.decide(dst, identity))),
        }
    }

    /// The decision for the connection's next request.
    pub fn current(
        &self,
        source: &dyn PolicySource,
        dst: SocketAddr,
        identity: &Identity,
    ) -> Decision {
        let generation = source.generation();
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.0 != generation {
            *cached = (generation, source.decide(dst, identity));
        }
        cached.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };

    use super::*;
    use crate::policy::{Inspection, Oversize, RequestPolicy};

    #[derive(Default)]
    struct Counting {
        generation: AtomicU64,
        decisions: AtomicU64,
    }

    impl PolicySource for Counting {
        fn generation(&self) -> u64 {
            self.generation.load(Ordering::SeqCst)
        }

        fn decide(&self, _: SocketAddr, _: &Identity) -> Decision {
            let n = self.decisions.fetch_add(1, Ordering::SeqCst);
            Decision::Apply(Arc::new(RequestPolicy {
                name: format!("p{n}"),
                tenant: crate::quota::TenantKey::Namespace,
                inspection: Inspection {
                    max_body_bytes: 1,
                    oversize: Oversize::Reject,
                },
            }))
        }
    }

    fn name(d: &Decision) -> &str {
        match d {
            Decision::Apply(p) => &p.name,
            _ => "",
        }
    }

    #[test]
    fn a_decision_is_kept_until_the_configuration_changes() {
        let source = Counting::default();
        let dst: SocketAddr = "198.19.0.1:8000".parse().unwrap();
        let id = Identity::default();
        let conn = ConnPolicy::new(&source, dst, &id);
        assert_eq!(name(&conn.current(&source, dst, &id)), "p0");
        assert_eq!(name(&conn.current(&source, dst, &id)), "p0");
        source.generation.store(7, Ordering::SeqCst);
        assert_eq!(name(&conn.current(&source, dst, &id)), "p1");
        assert_eq!(source.decisions.load(Ordering::SeqCst), 2);
    }
}
