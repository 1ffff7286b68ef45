//! The few rtnetlink operations the harness needs, each panicking with what it tried.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth, RouteMessageBuilder, packet_route::route::RouteType,
};

pub async fn index(h: &Handle, name: &str) -> u32 {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(link)) => link.header.index,
        Ok(None) => panic!("link {name} not found"),
        Err(e) => panic!("looking up link {name}: {e}"),
    }
}

pub async fn link_up(h: &Handle, name: &str) {
    h.link()
        .set(LinkUnspec::new_with_name(name).up().build())
        .execute()
        .await
        .unwrap_or_else(|e| panic!("setting {name} up: {e}"));
}

/// A veth pair whose `peer` end is moved into the namespace `peer_ns` (a raw descriptor).
pub async fn veth(h: &Handle, name: &str, peer: &str, peer_ns: i32) {
    h.link()
        .add(LinkVeth::new(name, peer).build())
        .execute()
        .await
        .unwrap_or_else(|e| panic!("creating veth {name}/{peer}: {e}"));
    h.link()
        .set(LinkUnspec::new_with_name(peer).setns_by_fd(peer_ns).build())
        .execute()
        .await
        .unwrap_or_else(|e| panic!("moving {peer} to its namespace: {e}"));
}

pub async fn address(h: &Handle, link: &str, addr: IpAddr, prefix_len: u8) {
    let i = index(h, link).await;
    h.address()
        .add(i, addr, prefix_len)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("adding {addr}/{prefix_len} to {link}: {e}"));
}

pub async fn default_route(h: &Handle, gateway: IpAddr) {
    let route = match gateway {
        IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build(),
        IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new().gateway(gw).build(),
    };
    h.route()
        .add(route)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("default route via {gateway}: {e}"));
}

/// A blackhole route: connects to these addresses fail unless something redirects them.
pub async fn blackhole(h: &Handle, net: IpAddr, prefix_len: u8) {
    let route = match net {
        IpAddr::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(n, prefix_len)
            .kind(RouteType::BlackHole)
            .build(),
        IpAddr::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(n, prefix_len)
            .kind(RouteType::BlackHole)
            .build(),
    };
    h.route()
        .add(route)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("blackhole {net}/{prefix_len}: {e}"));
}
