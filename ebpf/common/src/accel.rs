//! Local-socket acceleration (optional, off by default): when both ends of a leg through the
//! proxy are sockets on this node, sk_msg moves each message straight into the peer socket's
//! receive queue instead of through the TCP/IP stack. Every such socket is filed in `PEERS`
//! under its own addresses; a message goes to the socket filed under the reverse ones.

/// A socket's own view of its connection. Addresses are IPv6 or IPv4-mapped IPv6, network
/// order; ports network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: [u8; 2],
    pub remote_port: [u8; 2],
}

const _: () = assert!(size_of::<SockKey>() == 36);

impl SockKey {
    /// The key under which the other end of the connection is filed.
    #[inline(always)]
    pub fn peer(&self) -> Self {
        Self {
            local_addr: self.remote_addr,
            remote_addr: self.local_addr,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, no implicit padding (size asserted), any bit pattern is valid.
    unsafe impl aya::Pod for super::SockKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_of_the_peer_is_the_socket_itself() {
        let key = SockKey {
            local_addr: [1; 16],
            remote_addr: [2; 16],
            local_port: [0, 80],
            remote_port: [0x1f, 0x90],
        };
        assert_eq!(key.peer().local_addr, [2; 16]);
        assert_eq!(key.peer().remote_port, [0, 80]);
        assert_eq!(key.peer().peer(), key);
    }
}
