//! A host that several test nodes reach: a network namespace of its own (never the root one)
//! with a veth pair to each node it is attached to, for what a cluster shares between nodes
//! (Redis for cluster-scope budgets, an API server).
//!
//! ```text
//!   node A netns: x<k> 198.18.<200+k>.1/24 ──veth── h<k> 198.18.<200+k>.2/24 :shared host netns
//!   node B netns: x<j> 198.18.<200+j>.1/24 ──veth── h<j> 198.18.<200+j>.2/24 :
//! ```
//!
//! Each node reaches the host at its own link's address ([`SharedHost::attach`] returns it);
//! nodes do not reach each other through it (the host does not forward). The namespace goes
//! away with the guard, taking the host ends of the links (and so the node ends) with it.

use std::{
    cell::Cell,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
};

use crate::{net, netns::NetNs, node::Node, unique_name};

/// Links a shared host can have (the third octet counts up from 200).
const MAX_LINKS: u8 = 50;

pub struct SharedHost {
    netns: NetNs,
    next: Cell<u8>,
}

// === impl SharedHost ===

impl SharedHost {
    pub fn new(test: &str) -> Self {
        Self {
            netns: NetNs::new(&format!("{}-host", unique_name(test))),
            next: Cell::new(0),
        }
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// Connects `node` to this host with a veth pair; returns the host's address as that node
    /// reaches it.
    pub fn attach(&self, node: &Node) -> IpAddr {
        let k = self.next.get();
        assert!(
            k < MAX_LINKS,
            "a shared host takes at most {MAX_LINKS} nodes"
        );
        self.next.set(k + 1);
        let (node_if, host_if) = (format!("x{k}"), format!("h{k}"));
        let node_addr = Ipv4Addr::new(198, 18, 200 + k, 1);
        let host_addr = Ipv4Addr::new(198, 18, 200 + k, 2);
        let host_fd = self.netns.fd().as_raw_fd();
        {
            let (node_if, host_if) = (node_if.clone(), host_if.clone());
            node.netns().netlink(move |h| async move {
                net::veth(&h, &node_if, &host_if, host_fd).await;
                net::address(&h, &node_if, node_addr.into(), 24).await;
                net::link_up(&h, &node_if).await;
            });
        }
        self.netns.netlink(move |h| async move {
            net::address(&h, &host_if, host_addr.into(), 24).await;
            net::link_up(&h, &host_if).await;
        });
        host_addr.into()
    }
}
