//! The proxy's side of the contract: recover where an accepted connection was going and who
//! made it, from the pinned `ORIG_DST` map.
//!
//! sock_ops files every redirected connection under the client's addresses as the client saw
//! them: its own address and port, and the proxy address it reached. The proxy sees the same
//! four values on the accepted socket (peer and local address), across network namespaces, so
//! one map lookup recovers the original destination and the caller's cgroup id. A miss means
//! the connection was not redirected (a direct connect to the proxy port) or its entry was
//! evicted: the proxy refuses it and the miss is counted (`proxy_no_entry`).

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::Path,
};

use aya::maps::{HashMap, MapData, MapError};
use sluice_common::{
    counters::Counter,
    intercept::v4_mapped,
    map_names,
    origdst::{ConnKey, OrigDst},
};
use tracing::debug;

use super::{counters::Counters, heartbeat::monotonic_ns, maps};
use crate::identity::{Interception, InterceptionSource};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Open(#[from] maps::Error),
    #[error(transparent)]
    Counters(#[from] super::counters::Error),
    #[error("reading ORIG_DST")]
    Read(#[source] MapError),
}

/// The `ORIG_DST` map, opened from the pin directory.
pub struct OrigDstTable {
    map: HashMap<MapData, ConnKey, OrigDst>,
    counters: Counters,
}

/// One live entry, for `sluice inspect connections`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Connection {
    pub client: SocketAddr,
    pub proxy: SocketAddr,
    pub original_dst: SocketAddr,
    pub cgroup_id: u64,
    pub policy_id: u32,
    /// Seconds since the connect().
    pub age_secs: f64,
}

// === impl OrigDstTable ===

impl OrigDstTable {
    pub fn new(map: HashMap<MapData, ConnKey, OrigDst>, counters: Counters) -> Self {
        Self { map, counters }
    }

    /// Opens the pinned map (for a process other than the agent: `sluice inspect`, tests).
    pub fn open(pin_dir: &Path) -> Result<Self, Error> {
        Ok(Self {
            map: maps::open_as(pin_dir, map_names::ORIG_DST, "LRU hash map")?,
            counters: Counters::open(pin_dir)?,
        })
    }

    /// The entry for an accepted connection, without counting a miss.
    pub fn get(&self, peer: SocketAddr, local: SocketAddr) -> Option<Interception> {
        let value = self.map.get(&key(peer, local), 0).ok()?;
        Some(Interception {
            original_dst: socket_addr(value.addr, value.port),
            cgroup_id: value.cgroup_id,
        })
    }

    /// Every live entry.
    pub fn connections(&self) -> Result<Vec<Connection>, Error> {
        let now = monotonic_ns();
        let mut out = Vec::new();
        for entry in self.map.iter() {
            let (k, v) = entry.map_err(Error::Read)?;
            out.push(Connection {
                client: socket_addr(k.client_addr, k.client_port),
                proxy: socket_addr(k.proxy_addr, k.proxy_port),
                original_dst: socket_addr(v.addr, v.port),
                cgroup_id: v.cgroup_id,
                policy_id: v.policy_id,
                age_secs: now.saturating_sub(v.created_ns) as f64 / 1e9,
            });
        }
        out.sort_by_key(|c| (c.client, c.proxy));
        Ok(out)
    }

    /// Counts a connection refused because its original destination was the proxy (508).
    pub fn count_loop(&self) {
        if let Err(e) = self.counters.bump(Counter::ProxyLoop) {
            debug!(error = %e, "counting a loop failed");
        }
    }
}

impl InterceptionSource for OrigDstTable {
    fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Option<Interception> {
        let found = self.get(peer, local);
        if found.is_none()
            && let Err(e) = self.counters.bump(Counter::ProxyNoEntry)
        {
            debug!(error = %e, "counting a miss failed");
        }
        found
    }
}

/// The map key of an accepted connection: `peer` is the client, `local` the proxy.
pub fn key(peer: SocketAddr, local: SocketAddr) -> ConnKey {
    ConnKey {
        client_addr: mapped(peer.ip()),
        proxy_addr: mapped(local.ip()),
        client_port: peer.port().to_be_bytes(),
        proxy_port: local.port().to_be_bytes(),
    }
}

/// IPv6 as is, IPv4 as IPv4-mapped IPv6 (the maps' form).
pub fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

/// A map address and port as a socket address; IPv4-mapped addresses become IPv4, because
/// that is what the client connected to (a dual-stack socket dialing an IPv4 service).
pub fn socket_addr(addr: [u8; 16], port: [u8; 2]) -> SocketAddr {
    SocketAddr::new(
        Ipv6Addr::from(addr).to_canonical(),
        u16::from_be_bytes(port),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_use_mapped_addresses_and_network_order() {
        let peer: SocketAddr = "198.18.1.2:40000".parse().unwrap_or_else(|e| panic!("{e}"));
        let local: SocketAddr = "198.18.0.1:15001".parse().unwrap_or_else(|e| panic!("{e}"));
        let k = key(peer, local);
        assert_eq!(&k.client_addr[10..], &[0xff, 0xff, 198, 18, 1, 2]);
        assert_eq!(k.client_port, 40000u16.to_be_bytes());
        assert_eq!(k.proxy_port, [0x3a, 0x99]);
        assert_eq!(socket_addr(k.client_addr, k.client_port), peer);
    }

    #[test]
    fn ipv6_stays_ipv6() {
        let a: SocketAddr = "[2001:2::5]:8000".parse().unwrap_or_else(|e| panic!("{e}"));
        let k = key(a, a);
        assert_eq!(socket_addr(k.client_addr, k.client_port), a);
    }
}
