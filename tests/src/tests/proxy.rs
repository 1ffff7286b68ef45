//! The proxy end to end on loopback: real clients (curl, raw sockets, hyper's h2 client), the
//! proxy in-process with the explicit fake interception table, the simulator upstream.

use std::{
    io::Write as _,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

use crate::loopback::{CLIENT, TestProxy};

mod admin;
mod backpressure;
mod errors;
mod h2abuse;
mod hostile;
mod inference;
mod injection;
mod passthrough;
mod policies;
mod shapes;
mod streams;

/// What curl got.
#[derive(Debug)]
pub struct Curl {
    pub ok: bool,
    pub status: u16,
    pub headers: String,
    pub body: String,
    pub stderr: String,
}

/// Runs curl from `CLIENT` with `args`, optionally feeding `stdin`.
/// POSTs the JSON `body` to the test proxy's chat completions route, with extra `headers`
/// (`"name: value"`).
pub fn chat(proxy: &TestProxy, body: &str, headers: &[&str]) -> Curl {
    let url = proxy.url("/v1/chat/completions");
    let mut args = vec!["-H", "content-type: application/json"];
    for header in headers {
        args.extend(["-H", header]);
    }
    args.extend(["--data-binary", body, &url]);
    curl(&args, None)
}

pub fn curl(args: &[&str], stdin: Option<&[u8]>) -> Curl {
    curl_from(CLIENT, args, stdin)
}

pub fn curl_from(source: &str, args: &[&str], stdin: Option<&[u8]>) -> Curl {
    let mut child = Command::new("curl")
        .args([
            "-sS",
            "-i",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "--interface",
            source,
        ])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running curl: {e}"));
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data)
            .unwrap_or_else(|e| panic!("curl stdin: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("curl: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // With -i, a 100 Continue may precede the real head.
    let mut rest = text.as_str();
    let (mut headers, mut body) = (String::new(), String::new());
    while let Some((head, tail)) = rest.split_once("\r\n\r\n") {
        headers = head.to_owned();
        body = tail.to_owned();
        rest = tail;
        if !head.contains(" 100") {
            break;
        }
    }
    let status = headers
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Curl {
        ok: out.status.success(),
        status,
        headers,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The JSON of a response body.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A TCP connection from `CLIENT` to `addr`.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    connect_from(CLIENT, addr).await
}

pub async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
    let from: SocketAddr = format!("{source}:0")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    socket
        .bind(from)
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    socket
        .connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// Writes `request` raw and reads until the peer closes or `timeout` passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> String {
    let mut stream = connect(addr).await;
    stream
        .write_all(request)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    read_until_close(&mut stream, timeout).await
}

pub async fn read_until_close(stream: &mut TcpStream, timeout: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

pub const CHAT: &str = r#"{"model":"llama-3-8b","max_tokens":5,"messages":[{"role":"user","content":"say five words"}]}"#;
pub const CHAT_STREAM: &str = r#"{"model":"llama-3-8b","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"say five words"}]}"#;

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}
