//! Start-up steps of `Datapath::start` that need no aya object: resolving what the settings
//! name on this host, validating the rules, and the first write of the configuration maps.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use aya::Ebpf;
use sluice_common::{
    config::{EXCLUDE_ALWAYS, EXCLUDE_SYSTEM},
    map_names,
};

use super::{
    AgentMap, Counters, Error, Rule, Settings,
    apply::{ExcludeTable, InterceptTable, LocalityTable},
    cgroup::Cgroup,
    intercept, load, maps,
    quota::{CallerTable, QuotaMap},
    sys,
};

/// What the settings name, found on this host.
pub(super) struct Resolved {
    pub(super) clients: Cgroup,
    pub(super) proxy_cgroup: Cgroup,
    /// The configured system subtrees and the agent's own cgroup.
    pub(super) static_exclusions: BTreeMap<u64, u32>,
    /// This process's network namespace: "host network".
    pub(super) netns_cookie: u64,
}

/// The maps the agent keeps writing while it runs.
pub(super) struct Tables {
    pub(super) intercept: InterceptTable,
    pub(super) exclude: ExcludeTable,
    pub(super) locality: LocalityTable,
    pub(super) quota: QuotaMap,
    pub(super) callers: CallerTable,
    pub(super) agent: AgentMap,
    pub(super) counters: Counters,
}

// === impl Resolved ===

impl Resolved {
    pub(super) fn of(settings: &Settings) -> Result<Self, Error> {
        let clients = Cgroup::resolve(&settings.cgroup)?;
        let own = Cgroup::own()?;
        let proxy_cgroup = match &settings.proxy_cgroup {
            Some(p) => Cgroup::resolve(p)?,
            None => own.clone(),
        };
        let mut static_exclusions = BTreeMap::new();
        for path in &settings.exclude_cgroups {
            static_exclusions.insert(Cgroup::resolve(path)?.id, EXCLUDE_SYSTEM);
        }
        static_exclusions.insert(own.id, EXCLUDE_ALWAYS);
        let netns_cookie = sys::own_netns_cookie().map_err(Error::NetnsCookie)?;
        Ok(Self {
            clients,
            proxy_cgroup,
            static_exclusions,
            netns_cookie,
        })
    }
}

// === impl Tables ===

impl Tables {
    /// Writes exclusions, rules, the stale limit and finally `CONFIG` (which enables the
    /// datapath), so the first connect that sees the configuration sees all of it.
    pub(super) fn write(
        ebpf: &mut Ebpf,
        expected: &BTreeMap<&'static str, maps::Geometry>,
        settings: &Settings,
        resolved: &Resolved,
        rules: &[Rule],
    ) -> Result<Self, Error> {
        let capacity = |name: &str| expected.get(name).map_or(0, |g| g.max_entries);
        let mut exclude = ExcludeTable::new(
            load::take(ebpf, map_names::EXCLUDE)?,
            capacity(map_names::EXCLUDE),
        );
        exclude.apply(&resolved.static_exclusions)?;
        let mut intercept = InterceptTable::new(
            load::take(ebpf, map_names::INTERCEPT)?,
            capacity(map_names::INTERCEPT),
        );
        intercept.apply(rules)?;
        // Adopted as it is: after a restart the pinned entries stay until the configuration
        // source delivers the state that replaces them.
        let locality = LocalityTable::new(
            load::take(ebpf, map_names::LOCALITY)?,
            capacity(map_names::LOCALITY),
        );
        // Both adopted as they are: the quota engine adopts QUOTA's state, and the callers stay
        // until the configuration source's first state replaces them.
        let quota = QuotaMap::new(
            load::take(ebpf, map_names::QUOTA)?,
            capacity(map_names::QUOTA),
        );
        let callers = CallerTable::new(
            load::take(ebpf, map_names::QUOTA_TENANTS)?,
            capacity(map_names::QUOTA_TENANTS),
        );
        let agent = AgentMap::new(load::take(ebpf, map_names::AGENT)?);
        agent.set_stale_after(settings.stale_after)?;
        let counters = Counters::new(load::take(ebpf, map_names::COUNTERS)?);
        load::write_config(
            ebpf,
            settings,
            resolved.clients.level,
            resolved.netns_cookie,
        )?;
        Ok(Self {
            intercept,
            exclude,
            locality,
            quota,
            callers,
            agent,
            counters,
        })
    }
}

/// Rejects rules the datapath cannot serve safely.
pub(super) fn validate(settings: &Settings, rules: &[Rule]) -> Result<(), Error> {
    if settings.proxy4.is_none() && settings.proxy6.is_none() {
        return Err(Error::Invalid("no proxy address is configured".into()));
    }
    let proxies: Vec<SocketAddr> = settings
        .proxy4
        .map(SocketAddr::V4)
        .into_iter()
        .chain(settings.proxy6.map(SocketAddr::V6))
        .collect();
    for rule in rules {
        // The proxy must never match a rule: a redirected connection would be redirected again
        // by a second program during an upgrade, and the proxy's own upstream dials would loop.
        if let Some(p) = proxies.iter().find(|p| rule.dst.matches(p.ip(), p.port())) {
            return Err(Error::Invalid(format!(
                "rule {} matches the proxy address {p} (a loop)",
                rule.dst
            )));
        }
        if rule.dst.is_v6() && settings.proxy6.is_none() {
            return Err(Error::Invalid(format!(
                "rule {} is IPv6 but no IPv6 proxy address (--proxy-addr6) is configured",
                rule.dst
            )));
        }
        let v4 = matches!(
            rule.dst.target,
            intercept::Target::Net {
                addr: IpAddr::V4(_),
                ..
            }
        );
        if v4 && settings.proxy4.is_none() {
            return Err(Error::Invalid(format!(
                "rule {} is IPv4 but no IPv4 proxy address (--proxy-addr) is configured",
                rule.dst
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::Duration};

    use super::*;

    fn settings(proxy6: bool) -> Settings {
        Settings {
            cgroup: PathBuf::from("pods"),
            proxy_cgroup: None,
            proxy4: "198.18.0.1:15001".parse().ok(),
            proxy6: proxy6.then(|| "[2001:2::1]:15001".parse().ok()).flatten(),
            agent_mark: 0x5c,
            pin_dir: PathBuf::from("/sys/fs/bpf/x"),
            stale_after: Duration::from_secs(2),
            exclude_cgroups: Vec::new(),
            accelerate: false,
        }
    }

    fn rule(s: &str) -> Rule {
        Rule::new(s.parse().unwrap_or_else(|e| panic!("{e}")), 0)
    }

    #[test]
    fn rules_that_capture_the_proxy_are_loops() {
        for bad in [
            "198.18.0.1:15001",
            "198.18.0.0/15:15001",
            "*:15001",
            "[2001:2::/32]:15001",
        ] {
            let e = validate(&settings(true), &[rule(bad)]).expect_err(bad);
            assert!(e.to_string().contains("a loop"), "{bad}: {e}");
        }
        // Another port, or the proxy's address family without its port: fine.
        validate(&settings(true), &[rule("198.18.0.1:8000"), rule("*:8000")])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_family_needs_its_proxy_address() {
        let e = validate(&settings(false), &[rule("[2001:2::/64]:8000")]).expect_err("no proxy6");
        assert!(e.to_string().contains("no IPv6 proxy address"), "{e}");
        // Port-only rules are fine: IPv6 connections then pass (counted as no_proxy_addr).
        validate(&settings(false), &[rule("*:8000")]).unwrap_or_else(|e| panic!("{e}"));
    }
}
