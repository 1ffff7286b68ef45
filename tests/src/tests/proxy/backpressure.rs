//! A client that stops reading holds at most a small fixed buffer per stream in the proxy.
//!
//! Measured, not timed: for each stalled stream, the body bytes the proxy process holds are the
//! body bytes in what it read from the simulator's socket, less the body bytes in what it wrote
//! to the client's. What it read is the simulator's output less what still sits in the kernel
//! (the simulator's send queue, the proxy's upstream receive queue); what it wrote is what the
//! kernel holds on the way out (its downstream send queue and the client's receive queue: the
//! client has read nothing), read back afterwards. The kernel's queues come from
//! `/proc/net/tcp`, per socket. Body bytes, not wire bytes: the relay gathers a burst of
//! upstream chunks into one, so the chunk framing on the two legs differs.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use sluice::proxy::body::GATHER_MAX;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpSocket,
};

use super::CHAT_STREAM;
use crate::{
    loopback::{CLIENT, TestProxy, test_config},
    modelsim::{ModelSim, SimConfig},
};

/// `(local, remote) -> (send queue, receive queue)` of every IPv4 TCP socket in this netns.
fn tcp_queues() -> HashMap<(SocketAddr, SocketAddr), (u64, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_else(|e| panic!("{e}"));
    let addr = |s: &str| -> Option<SocketAddr> {
        let (ip, port) = s.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // The kernel prints the address in host byte order of its network-order value.
        Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(ip)),
            port,
        )))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (tx, rx) = fields.get(4)?.split_once(':')?;
            Some((
                (addr(fields.get(1)?)?, addr(fields.get(2)?)?),
                (
                    u64::from_str_radix(tx, 16).ok()?,
                    u64::from_str_radix(rx, 16).ok()?,
                ),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_holds_a_small_fixed_buffer_in_the_proxy() {
    let sim = ModelSim::start(SimConfig::default());
    let config = test_config();
    // What the configuration allows per stream: hyper's read buffer on the upstream
    // connection and its write buffer on the client's (each capped at `max_buf_size`, which
    // the proxy sets from `max_header_bytes`), one gathered burst past the write buffer's cap,
    // plus one relayed chunk in each and the SSE scanner's held partial event (one ~200-byte
    // event here).
    let hyper_buf = config.max_header_bytes.max(8192) as u64;
    let bound = 2 * hyper_buf + GATHER_MAX as u64 + 16 * 1024;
    let proxy = TestProxy::start(config, sim.addr());
    let body = CHAT_STREAM.replace(r#""max_tokens":5"#, r#""max_tokens":1000000"#);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: model\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    const STREAMS: usize = 4;
    let mut clients = Vec::new();
    for _ in 0..STREAMS {
        // A small receive buffer on the client: less for the kernel to soak up first.
        let socket = TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
        socket
            .set_recv_buffer_size(16 << 10)
            .unwrap_or_else(|e| panic!("{e}"));
        socket
            .bind(
                format!("{CLIENT}:0")
                    .parse()
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let mut stream = socket
            .connect(proxy.addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        stream
            .write_all(request.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        clients.push(stream);
    }
    // Wait (bounded) until every generator has stopped: the total stops moving.
    let mut last = u64::MAX;
    let mut still = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sim.generated();
        still = if now == last && sim.records().len() == STREAMS {
            still + 1
        } else {
            0
        };
        last = now;
        if still == 3 {
            break;
        }
    }
    assert_eq!(still, 3, "the generators never stalled: {last} tokens");

    let queues = tcp_queues();
    let q = |local: SocketAddr, remote: SocketAddr| {
        *queues
            .get(&(local, remote))
            .unwrap_or_else(|| panic!("no socket {local} -> {remote}"))
    };
    // Per upstream connection: the body bytes in what the proxy read from it.
    let mut read_from_upstream = 0u64;
    for record in sim.records() {
        let peer = record.peer.unwrap_or_else(|| panic!("{record:?}"));
        let wire = sim.wire(peer);
        let (sim_tx, _) = q(sim.addr(), peer);
        let (_, proxy_rx) = q(peer, sim.addr());
        let read = wire.len() as u64 - sim_tx - proxy_rx;
        read_from_upstream += body_bytes(&wire[..read as usize]);
    }
    // Per client connection: the body bytes in what the proxy wrote to it, read back now (the
    // first bytes the client reads are exactly those).
    let mut written_downstream = 0u64;
    for client in &mut clients {
        let client_addr = client.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (proxy_tx, _) = q(proxy.addr, client_addr);
        let (_, client_rx) = q(client_addr, proxy.addr);
        let mut wire = vec![0; (proxy_tx + client_rx) as usize];
        tokio::time::timeout(Duration::from_secs(20), client.read_exact(&mut wire))
            .await
            .unwrap_or_else(|_| panic!("reading back what the proxy wrote timed out"))
            .unwrap_or_else(|e| panic!("{e}"));
        written_downstream += body_bytes(&wire);
    }
    let held = read_from_upstream.saturating_sub(written_downstream);
    let per_stream = held / STREAMS as u64;
    eprintln!(
        "backpressure: {STREAMS} stalled streams, {last} tokens generated; proxy read {read_from_upstream} B of body, wrote {written_downstream} B, holds {held} B ({per_stream} B per stream; bound {bound} B)"
    );
    assert!(
        held <= bound * STREAMS as u64,
        "the proxy holds {held} B for {STREAMS} stalled streams, over the {bound} B per stream its configuration allows"
    );
    // The generators stopped far short of their million tokens each.
    assert!(last < 100_000 * STREAMS as u64, "{last} tokens generated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_again_is_cut_and_settled() {
    let sim = ModelSim::start(SimConfig::default());
    let admission = crate::loopback::RecordingAdmission::default();
    let config = sluice::proxy::Config {
        stream_idle_timeout: Duration::from_millis(500),
        ..test_config()
    };
    let proxy = TestProxy::start_with(config, sim.addr(), |mut d| {
        d.admission = std::sync::Arc::new(admission.clone());
        d
    });
    let body = CHAT_STREAM.replace(r#""max_tokens":5"#, r#""max_tokens":1000000"#);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: model\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let socket = TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
    socket
        .set_recv_buffer_size(16 << 10)
        .unwrap_or_else(|e| panic!("{e}"));
    socket
        .bind(
            format!("{CLIENT}:0")
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let mut stalled = socket
        .connect(proxy.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    stalled
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Never read. Once the buffers are full the proxy cannot write for the idle timeout: it
    // must give the stream up (the upstream request cancelled, the ticket settled) instead of
    // holding it for as long as the client stays connected.
    let records = sim.wait_for(Duration::from_secs(20), |r| {
        r.first().is_some_and(|r| r.aborted)
    });
    assert!(
        records.first().is_some_and(|r| r.aborted),
        "the stalled stream is still open upstream: {records:?}"
    );
    let settled = admission.wait_settled(1, Duration::from_secs(5));
    assert_eq!(settled.len(), 1, "settled once");
    assert!(settled[0].output_tokens > 0, "{:?}", settled[0]);
    assert_eq!(
        proxy.metric(r#"sluice_streams_total{outcome="client_abort"}"#),
        1.0
    );
    drop(stalled);
}

/// The body bytes in `wire`, the first bytes of a chunked HTTP/1.1 response: what follows the
/// head, less the chunk framing. `wire` may end anywhere, mid-chunk included.
fn body_bytes(wire: &[u8]) -> u64 {
    let Some(head_end) = wire.windows(4).position(|w| w == b"\r\n\r\n") else {
        return 0;
    };
    let head = String::from_utf8_lossy(&wire[..head_end]).to_ascii_lowercase();
    assert!(
        head.contains("transfer-encoding: chunked"),
        "a stream answered without chunked framing: {head}"
    );
    let mut rest = &wire[head_end + 4..];
    let mut body = 0u64;
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return body;
        };
        let line = std::str::from_utf8(&rest[..line_end]).unwrap_or_else(|e| panic!("{e}"));
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        if size == 0 {
            return body;
        }
        rest = &rest[line_end + 2..];
        if rest.len() <= size {
            return body + rest.len() as u64;
        }
        body += size as u64;
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}
