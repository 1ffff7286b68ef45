//! The datapath's settings, written by the agent into the one-entry `CONFIG` array.

/// Where intercepted connections go, and how the programs recognise the agent's own sockets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// IPv4 address of the proxy listener, network byte order.
    pub proxy_ip4: [u8; 4],
    /// Port of the proxy listener, network byte order.
    pub proxy_port: [u8; 2],
    pub _pad0: [u8; 2],
    /// `SO_MARK` carried by every socket the agent opens; such sockets are never redirected.
    pub agent_mark: u32,
    /// Non-zero once the agent has written a complete configuration. Until then every
    /// connection passes untouched.
    pub enabled: u32,
}

const _: () = assert!(size_of::<DatapathConfig>() == 16);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, no padding (asserted above), every bit pattern is valid.
unsafe impl aya::Pod for DatapathConfig {}
