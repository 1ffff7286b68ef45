//! The relay against a real hyper client connection (over an in-memory pipe) whose server
//! side is scripted: bursts leave as few frames, paced chunks each as their own, and nothing
//! is lost or reordered either way.

use std::{pin::Pin, time::Duration};

use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::{super::ResponseBody, GATHER_MAX, RelayBody};
use crate::proxy::poll_again::PollAgain;

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                      transfer-encoding: chunked\r\n\r\n";

/// One step of the scripted upstream.
enum Step {
    Write(Vec<u8>),
    Pause(Duration),
    /// Close the connection mid-body.
    Reset,
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

fn event(i: usize) -> Vec<u8> {
    format!("data: {{\"i\":{i}}}\n\n").into_bytes()
}

/// A response body from an upstream that plays `script` after its head.
async fn upstream(script: Vec<Step>) -> (Incoming, IntCounter) {
    let (near, far) = tokio::io::duplex(256 << 10);
    tokio::spawn(serve(far, script));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(near))
        .await
        .unwrap_or_else(|e| panic!("handshake: {e}"));
    tokio::spawn(conn);
    let request = http::Request::get("/v1/chat/completions")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let response = sender
        .send_request(request)
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    let counter = IntCounter::new("relayed_bytes", "test").unwrap_or_else(|e| panic!("{e}"));
    (response.into_body(), counter)
}

async fn serve(mut far: DuplexStream, script: Vec<Step>) {
    let mut head = Vec::new();
    let mut buf = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match far.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = far.write_all(HEAD).await;
    for step in script {
        match step {
            Step::Write(bytes) => {
                let _ = far.write_all(&bytes).await;
            }
            Step::Pause(pause) => tokio::time::sleep(pause).await,
            Step::Reset => return,
        }
    }
    // Keep the connection open until the client is done with it.
    let _ = far.read(&mut buf).await;
}

/// What the relay gave: every frame, the error that ended it if one did, and how many times it
/// held bytes back for a scheduler round.
struct Relayed {
    frames: Vec<Bytes>,
    error: Option<String>,
    rounds_held: usize,
}

async fn relay(inner: Incoming, counter: &IntCounter) -> Relayed {
    let mut body = RelayBody::response(
        Bytes::new(),
        inner,
        Duration::from_secs(5),
        counter.clone(),
        None,
    );
    let mut frames = Vec::new();
    let next = async {
        loop {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => return None,
                Some(Err(error)) => return Some(error.to_string()),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        frames.push(data);
                    }
                }
            }
        }
    };
    let error = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .unwrap_or_else(|_| panic!("the relay hung"));
    let ResponseBody::Relay(relay) = &body else {
        panic!("a streamed response gets the relay");
    };
    Relayed {
        frames,
        error,
        rounds_held: relay.rounds_held,
    }
}

fn concat(frames: &[Bytes]) -> Vec<u8> {
    frames.iter().fold(BytesMut::new(), |mut all, f| {
        all.extend_from_slice(f);
        all
    })[..]
        .to_vec()
}

#[tokio::test]
async fn a_burst_leaves_in_two_frames() {
    burst_leaves_in_two_frames(false).await;
}

/// The proxy's connection task polls itself again when it wakes itself; the relay's wake to
/// let the upstream connection's task run must still go round the runtime, or nothing is
/// gathered.
#[tokio::test]
async fn a_burst_leaves_in_two_frames_from_a_task_that_polls_itself_again() {
    burst_leaves_in_two_frames(true).await;
}

async fn burst_leaves_in_two_frames(poll_again: bool) {
    let events: Vec<u8> = (0..200).flat_map(event).collect();
    let mut wire: Vec<u8> = (0..200).flat_map(|i| chunk(&event(i))).collect();
    wire.extend_from_slice(b"0\r\n\r\n");
    let (inner, counter) = upstream(vec![Step::Write(wire)]).await;
    let relayed = if poll_again {
        PollAgain::new(relay(inner, &counter)).await
    } else {
        relay(inner, &counter).await
    };
    let got = &relayed.frames;
    assert_eq!(relayed.error, None);
    assert_eq!(concat(got), events, "every byte, in order");
    // The first chunk goes out at once (nothing says a burst follows); the 199 that follow it
    // closely, ~12 bytes each, are gathered into one.
    let sizes: Vec<usize> = got.iter().map(Bytes::len).collect();
    assert_eq!(sizes.len(), 2, "frame sizes: {sizes:?}");
    assert_eq!(got[0], Bytes::from(event(0)));
    assert!(
        relayed.rounds_held > 0,
        "the burst was held while it lasted"
    );
    assert_eq!(counter.get(), events.len() as u64);
}

#[tokio::test]
async fn paced_chunks_each_leave_before_the_next_arrives() {
    let mut script = Vec::new();
    for i in 0..5 {
        script.push(Step::Write(chunk(&event(i))));
        script.push(Step::Pause(Duration::from_millis(40)));
    }
    script.push(Step::Write(b"0\r\n\r\n".to_vec()));
    let (inner, counter) = upstream(script).await;
    let relayed = relay(inner, &counter).await;
    assert_eq!(relayed.error, None);
    let expected: Vec<Bytes> = (0..5).map(|i| Bytes::from(event(i))).collect();
    assert_eq!(
        relayed.frames, expected,
        "one frame per paced chunk, none held for the next"
    );
    assert_eq!(
        relayed.rounds_held, 0,
        "a chunk after a pause goes out in the poll that reads it"
    );
}

#[tokio::test]
async fn a_long_burst_is_cut_at_the_gather_limit() {
    let piece = vec![b'x'; 1024];
    let chunks = 64;
    let mut wire: Vec<u8> = (0..chunks).flat_map(|_| chunk(&piece)).collect();
    wire.extend_from_slice(b"0\r\n\r\n");
    let (inner, counter) = upstream(vec![Step::Write(wire)]).await;
    let Relayed {
        frames: got, error, ..
    } = relay(inner, &counter).await;
    assert_eq!(error, None);
    assert_eq!(concat(&got).len(), chunks * piece.len());
    assert!(
        got.iter().all(|f| f.len() <= GATHER_MAX + piece.len()),
        "a relay holds at most one chunk past its limit: {:?}",
        got.iter().map(Bytes::len).collect::<Vec<_>>()
    );
    assert!(got.len() >= chunks * piece.len() / (GATHER_MAX + piece.len()));
}

#[tokio::test]
async fn held_bytes_go_out_before_an_upstream_reset_cuts_the_body() {
    let wire: Vec<u8> = (0..3).flat_map(|i| chunk(&event(i))).collect();
    let (inner, counter) = upstream(vec![Step::Write(wire), Step::Reset]).await;
    let Relayed {
        frames: got, error, ..
    } = relay(inner, &counter).await;
    let events: Vec<u8> = (0..3).flat_map(event).collect();
    assert_eq!(concat(&got), events);
    assert!(
        error.is_some_and(|e| e.contains("upstream")),
        "a cut body ends with an error, not a clean end"
    );
}
