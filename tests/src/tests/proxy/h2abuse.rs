//! HTTP/2 abuse against the proxy, with hand-written frames (a well-behaved client library
//! cannot misbehave on purpose): rapid reset (CVE-2023-44487) ends in GOAWAY with bounded
//! work, and streams past `h2_max_concurrent_streams` are refused, never queued without bound.
//! Every assertion counts frames and requests; none is timed.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::tcp::OwnedReadHalf,
    sync::mpsc,
};

use super::{CHAT, CHAT_STREAM, connect, curl};
use crate::{
    loopback::{TestProxy, test_config},
    modelsim::{ModelSim, SimConfig},
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// One frame as received.
#[derive(Debug, Clone)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or_else(|e| panic!("{e}"));
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HPACK string literal (no Huffman); every string here is under 127 bytes.
fn hpack_str(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).unwrap_or_else(|e| panic!("{e}")));
    out.extend(s.as_bytes());
}

/// HEADERS + DATA (END_STREAM) of a POST carrying `body`, with `extra` headers.
fn post(stream: u32, path: &str, body: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    // :method POST, :scheme http (static table), :path and :authority as literals without
    // indexing, content-type by its static-table name (31 = 15 + 16).
    let mut block = vec![0x83, 0x86, 0x04];
    hpack_str(&mut block, path);
    block.push(0x01);
    hpack_str(&mut block, "model");
    block.extend([0x0f, 0x10]);
    hpack_str(&mut block, "application/json");
    for (name, value) in extra {
        block.push(0x00);
        hpack_str(&mut block, name);
        hpack_str(&mut block, value);
    }
    let mut out = frame(HEADERS, END_HEADERS, stream, &block);
    out.extend(frame(DATA, END_STREAM, stream, body.as_bytes()));
    out
}

/// Reads frames until the peer closes or errors (or `limit` passes), sending each on.
async fn read_frames(mut read: OwnedReadHalf, tx: mpsc::UnboundedSender<Frame>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let f = Frame {
                kind: buf[3],
                flags: buf[4],
                stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
                payload: buf[9..9 + len].to_vec(),
            };
            buf.drain(..9 + len);
            if tx.send(f).is_err() {
                return;
            }
        }
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn u32_at(payload: &[u8], at: usize) -> u32 {
    payload
        .get(at..at + 4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway_and_bounded_work() {
    let sim = ModelSim::start(SimConfig::default());
    let config = test_config();
    let limit = config.h2_max_pending_accept_reset_streams;
    let proxy = TestProxy::start(config, sim.addr());
    let (read, mut write) = connect(proxy.addr).await.into_split();
    let (tx, mut frames) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_frames(read, tx));

    write
        .write_all(PREFACE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    write
        .write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Up to 10,000 streams, each opened and cancelled at once, in batches of 100; stop as
    // soon as the proxy says GOAWAY or stops reading.
    let (mut sent, mut goaway) = (0u32, None);
    'batches: for _ in 0..100 {
        let mut batch = Vec::new();
        for _ in 0..100 {
            let id = 2 * sent + 1;
            batch.extend(post(id, "/v1/chat/completions", CHAT, &[]));
            batch.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
            sent += 1;
        }
        if write.write_all(&batch).await.is_err() {
            break;
        }
        while let Ok(f) = frames.try_recv() {
            if f.kind == GOAWAY {
                goaway = Some(f);
                break 'batches;
            }
        }
    }
    // The rest of what the proxy sent, until it closes (bounded).
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(f) = frames.recv().await {
            if f.kind == GOAWAY && goaway.is_none() {
                goaway = Some(f);
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the proxy closed the connection");
    reader.abort();
    let goaway = goaway.unwrap_or_else(|| panic!("no GOAWAY after {sent} reset streams"));
    assert_eq!(
        u32_at(&goaway.payload, 4),
        ENHANCE_YOUR_CALM,
        "GOAWAY reason"
    );
    let last_stream = u32_at(&goaway.payload, 0) & 0x7fff_ffff;
    // Client streams are the odd ids 1, 3, 5, ...
    let processed = last_stream.div_ceil(2);
    let forwarded = sim.records().len();
    eprintln!(
        "rapid reset: sent {sent} streams, GOAWAY after stream {last_stream} ({processed} streams), {forwarded} reached the model server"
    );
    // The proxy read no stream past the one that crossed the reset limit (the kernel may have
    // accepted more of the burst; the proxy never processed it), and none of the reset
    // streams cost an upstream request it had not accepted.
    assert!(
        processed as usize <= limit + 1,
        "processed {processed} streams with a limit of {limit}"
    );
    assert!(
        forwarded <= processed as usize,
        "{forwarded} upstream requests"
    );
    // Other clients are unaffected.
    let r = curl(
        &[
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/json",
            "--data-binary",
            CHAT,
            &proxy.url("/v1/chat/completions"),
        ],
        None,
    );
    assert!(r.headers.starts_with("HTTP/2 200"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_concurrency_limit_are_refused() {
    let sim = ModelSim::start(SimConfig::default());
    let max = 4u32;
    let config = sluice::proxy::Config {
        h2_max_concurrent_streams: max,
        ..test_config()
    };
    let proxy = TestProxy::start(config, sim.addr());
    let (read, mut write) = connect(proxy.addr).await.into_split();
    let (tx, mut frames) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_frames(read, tx));
    write
        .write_all(PREFACE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    write
        .write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // The proxy advertises the limit; it applies once acknowledged.
    let settings = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match frames.recv().await {
                Some(f) if f.kind == SETTINGS && f.flags & ACK == 0 => return f,
                Some(_) => {}
                None => panic!("closed before SETTINGS"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no SETTINGS"));
    let advertised = settings.payload.chunks(6).find_map(|s| {
        (u16::from_be_bytes([s[0], s[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS).then(|| u32_at(s, 2))
    });
    assert_eq!(advertised, Some(max), "{settings:?}");
    write
        .write_all(&frame(SETTINGS, ACK, 0, &[]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Ten long streams at once, ignoring the limit.
    let slow = CHAT_STREAM.replace(r#""max_tokens":5"#, r#""max_tokens":200"#);
    let mut burst = Vec::new();
    for i in 0..10u32 {
        burst.extend(post(
            2 * i + 1,
            "/v1/chat/completions",
            &slow,
            &[("x-sim-tps", "5")],
        ));
    }
    write
        .write_all(&burst)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut answered, mut refused) = (Vec::new(), Vec::new());
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        // The refused streams' DATA frames also earn a STREAM_CLOSED reset each.
        while answered.len() < max as usize || refused.len() < 10 - max as usize {
            match frames.recv().await {
                Some(f) if f.kind == HEADERS => answered.push(f.stream),
                Some(f) if f.kind == RST_STREAM && u32_at(&f.payload, 0) == REFUSED_STREAM => {
                    refused.push(f.stream);
                }
                Some(_) => {}
                None => break,
            }
        }
    })
    .await;
    reader.abort();
    drop(write);
    answered.sort_unstable();
    refused.sort_unstable();
    assert_eq!(answered, [1, 3, 5, 7], "the first {max} streams are served");
    assert_eq!(refused, [9, 11, 13, 15, 17, 19], "the rest are refused");
    assert!(sim.max_running() <= i64::from(max), "{}", sim.max_running());
    assert_eq!(sim.records().len(), max as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_honours_the_limit_is_queued_not_refused() {
    let sim = ModelSim::start(SimConfig {
        tokens_per_second: 100.0,
        ..SimConfig::default()
    });
    let max = 4;
    let config = sluice::proxy::Config {
        h2_max_concurrent_streams: max,
        ..test_config()
    };
    let proxy = TestProxy::start(config, sim.addr());
    let stream = connect(proxy.addr).await;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap_or_else(|e| panic!("h2 handshake: {e}"));
    tokio::spawn(conn);
    // One exchange first, so the client has the proxy's SETTINGS (its limit) before the burst;
    // streams opened before that would be refused (REFUSED_STREAM, safe to retry).
    let warmup = Request::post(format!("http://{}/v1/chat/completions", proxy.addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(CHAT)))
        .unwrap_or_else(|e| panic!("{e}"));
    let response = sender
        .clone()
        .send_request(warmup)
        .await
        .unwrap_or_else(|e| panic!("warm-up: {e}"));
    assert_eq!(response.status(), 200);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut sender = sender.clone();
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let request = Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(CHAT_STREAM)))
                .unwrap_or_else(|e| panic!("{e}"));
            let response = sender
                .send_request(request)
                .await
                .unwrap_or_else(|e| panic!("stream {i}: {e}"));
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .unwrap_or_else(|e| panic!("stream {i}: {e}"))
                .to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }));
    }
    for task in tasks {
        let (status, body) = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap_or_else(|_| panic!("stream did not finish"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "{body}");
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    }
    assert_eq!(sim.records().len(), 13);
    assert!(
        sim.max_running() <= i64::from(max),
        "at most {max} at once upstream: {}",
        sim.max_running()
    );
}
