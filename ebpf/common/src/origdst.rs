//! What the datapath records about a redirected connection, and how the proxy finds it again.
//!
//! connect4/connect6 file an [`OrigDst`] under the socket's cookie (`SOCKETS`); when the
//! connection is established, sock_ops moves it under the connection's addresses
//! ([`ConnKey`], `ORIG_DST`), which the proxy can rebuild from an accepted socket's peer and
//! local addresses even though the client lives in another network namespace.

use crate::accel::SockKey;

/// The client side of a redirected connection, as both ends see it. Addresses are IPv6 or
/// IPv4-mapped IPv6, network order; ports network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The client's address (the accepted socket's peer).
    pub client_addr: [u8; 16],
    /// The proxy's address the client reached (the accepted socket's local address).
    pub proxy_addr: [u8; 16],
    pub client_port: [u8; 2],
    pub proxy_port: [u8; 2],
}

const _: () = assert!(size_of::<ConnKey>() == 36);

impl From<SockKey> for ConnKey {
    /// The key of a client socket's connection, from that socket's own addresses.
    #[inline(always)]
    fn from(own: SockKey) -> Self {
        Self {
            client_addr: own.local_addr,
            proxy_addr: own.remote_addr,
            client_port: own.local_port,
            proxy_port: own.remote_port,
        }
    }
}

/// Where a redirected connection was going and who made it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrigDst {
    /// The caller's cgroup v2 id (`bpf_get_current_cgroup_id()`, the directory's inode).
    pub cgroup_id: u64,
    /// `CLOCK_MONOTONIC` nanoseconds of the connect().
    pub created_ns: u64,
    /// The original destination: IPv6, or IPv4-mapped IPv6; network order.
    pub addr: [u8; 16],
    /// The original destination port, network order.
    pub port: [u8; 2],
    /// 4 or 6: the family of the connect hook that saw it.
    pub family: u8,
    pub _pad0: u8,
    /// The policy whose rule matched.
    pub policy_id: u32,
}

const _: () = assert!(size_of::<OrigDst>() == 40);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, no implicit padding (sizes asserted), any bit pattern is valid.
    unsafe impl aya::Pod for super::ConnKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigDst {}
}
