//! The datapath's settings, written by the agent into the one-entry `CONFIG` array, and the
//! values of the `EXCLUDE` map.

/// Where intercepted connections go, and how the programs recognise the agent's own sockets
/// and the node's own processes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// IPv6 address of the proxy listener (network order); valid with `CFG_PROXY6`.
    pub proxy_ip6: [u8; 16],
    /// IPv4 address of the proxy listener (network order); valid with `CFG_PROXY4`.
    pub proxy_ip4: [u8; 4],
    /// Port of the IPv4 proxy listener, network byte order.
    pub proxy_port4: [u8; 2],
    /// Port of the IPv6 proxy listener, network byte order.
    pub proxy_port6: [u8; 2],
    /// `SO_MARK` carried by every socket the agent opens; such sockets are never redirected.
    pub agent_mark: u32,
    /// `CFG_*` bits.
    pub flags: u32,
    /// Network-namespace cookie of the agent (`SO_NETNS_COOKIE`): processes in it are "host
    /// network" and are only intercepted by rules that opt in.
    pub host_netns_cookie: u64,
    /// cgroup v2 level (root = 0) of the attach cgroup. The exclusion walk looks at the
    /// caller's ancestors below it, so one `EXCLUDE` entry covers a whole subtree.
    pub attach_level: u32,
    pub _pad0: u32,
}

const _: () = assert!(size_of::<DatapathConfig>() == 48);

/// The configuration is complete. Until it is set, every connection passes untouched.
pub const CFG_ENABLED: u32 = 1 << 0;
/// `proxy_ip4`/`proxy_port4` are valid.
pub const CFG_PROXY4: u32 = 1 << 1;
/// `proxy_ip6`/`proxy_port6` are valid.
pub const CFG_PROXY6: u32 = 1 << 2;
/// Local-socket acceleration is on: sock_ops files the sockets of both legs in `PEERS`.
pub const CFG_ACCEL: u32 = 1 << 3;

/// How many cgroup levels below the attach cgroup the exclusion walk inspects. Kubernetes puts
/// containers three levels below `kubepods` (QoS class, pod, container); eight leaves room for
/// nested runtimes while keeping the verifier's loop bound small.
pub const EXCLUDE_MAX_DEPTH: u32 = 8;

/// Value of an `EXCLUDE` entry: why a cgroup subtree is not intercepted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Exclusion {
    /// `EXCLUDE_*`.
    pub kind: u32,
}

const _: () = assert!(size_of::<Exclusion>() == 4);

/// A system subtree (kube-system, the agent's namespace, a configured path): excluded unless
/// the matching rule carries `FLAG_INCLUDE_SYSTEM`.
pub const EXCLUDE_SYSTEM: u32 = 1;
/// The agent's own cgroup: never intercepted, whatever a policy says (loop prevention).
pub const EXCLUDE_ALWAYS: u32 = 2;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, no implicit padding (size asserted), every bit pattern is valid.
    unsafe impl aya::Pod for super::DatapathConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Exclusion {}
}
