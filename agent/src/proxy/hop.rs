//! What changes when a request crosses the proxy: the request is pointed at its upstream over
//! HTTP/1.1, hop-by-hop and sluice-internal headers are dropped, and the client is named by the
//! address sluice accepted it from, never by what it wrote.

use std::net::SocketAddr;

use http::{
    HeaderMap, HeaderName, HeaderValue, Uri, Version, header,
    uri::{Authority, PathAndQuery, Scheme},
};

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the non-standard
/// ones proxies also drop.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Prefix of sluice's own headers: a client must never be able to send them.
const INTERNAL_PREFIX: &str = "x-sluice-";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// What a connection's requests carry across the hop, formatted once per connection: the
/// original destination as a URI authority and the client's address for `x-forwarded-for`.
#[derive(Debug)]
pub struct ConnHop {
    original_dst: SocketAddr,
    authority: Option<Authority>,
    forwarded_for: Option<HeaderValue>,
}

impl ConnHop {
    pub fn new(original_dst: SocketAddr, peer: SocketAddr) -> Self {
        Self {
            original_dst,
            authority: authority(original_dst),
            // An IP address always makes a valid header value.
            forwarded_for: HeaderValue::from_str(&peer.ip().to_string()).ok(),
        }
    }

    /// `dst` as a URI authority (routing may pick another upstream than the original).
    fn authority(&self, dst: SocketAddr) -> Option<Authority> {
        if dst == self.original_dst {
            self.authority.clone()
        } else {
            authority(dst)
        }
    }
}

fn authority(dst: SocketAddr) -> Option<Authority> {
    Authority::try_from(dst.to_string()).ok()
}

/// Points a request at `dst` over HTTP/1.1, removes what must not cross the hop, and states
/// who the client is.
pub(super) fn prepare_upstream(parts: &mut http::request::Parts, dst: SocketAddr, hop: &ConnHop) {
    let authority = hop.authority(dst);
    // HTTP/2 carries the host in `:authority`; HTTP/1.1 upstream needs it as `Host`.
    if !parts.headers.contains_key(header::HOST) {
        let host = parts
            .uri
            .authority()
            .or(authority.as_ref())
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        if let Some(host) = host {
            parts.headers.insert(header::HOST, host);
        }
    }
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = authority;
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    if let Ok(u) = Uri::from_parts(uri) {
        parts.uri = u;
    }
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    strip_internal(&mut parts.headers);
    set_forwarded_for(&mut parts.headers, hop.forwarded_for.clone());
}

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn strip_internal(headers: &mut HeaderMap) {
    let internal: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(INTERNAL_PREFIX))
        .cloned()
        .collect();
    for name in internal {
        headers.remove(name);
    }
}

/// The upstream sees the proxy's address, so it learns the client's from `x-forwarded-for`,
/// which sluice sets to the address it accepted the connection from. Whatever the pod claimed
/// (`x-forwarded-for`, `forwarded`, `x-real-ip`) is dropped: the pod is the first hop sluice
/// can vouch for, and identity never comes from headers a client writes.
fn set_forwarded_for(headers: &mut HeaderMap, peer: Option<HeaderValue>) {
    headers.remove(header::FORWARDED);
    headers.remove(X_REAL_IP);
    headers.remove(X_FORWARDED_FOR);
    if let Some(value) = peer {
        headers.insert(X_FORWARDED_FOR, value);
    }
}
