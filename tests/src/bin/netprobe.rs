//! `sluice-netprobe`: the client and server processes of the network-namespace tests.
//!
//! A test starts it inside a pod's network namespace and cgroup (or the node's), so what it
//! does is seen by the datapath as a real workload would be. It prints one JSON line per
//! result on stdout, which the test parses.
//!
//! ```text
//! sluice-netprobe serve --listen ADDR[,ADDR] --name NAME [--pin-dir DIR] [--hold-ms N]
//! sluice-netprobe connect --to ADDR [--mark N] [--timeout-ms N] [--until NAME --within-ms N]
//! sluice-netprobe connects --to ADDR --count N
//! sluice-netprobe sockopts --to ADDR
//! sluice-netprobe udp --to ADDR
//! ```
//!
//! `serve` answers every connection with an HTTP/1.0 response whose body is a JSON object
//! naming the server, the peer, and what the proxy side can recover about the connection: the
//! pinned `ORIG_DST` lookup (with `--pin-dir`) and `getsockopt(SO_ORIGINAL_DST)`.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sluice::{datapath::OrigDstTable, identity::InterceptionSource as _, socket::Marked};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((verb, rest)) = args.split_first() else {
        fail("usage: sluice-netprobe serve|connect|sockopts ...");
    };
    let opts = options(rest);
    match verb.as_str() {
        "serve" => serve(&opts),
        "connect" => connect_verb(&opts),
        "connects" => connects(&opts),
        "sockopts" => sockopts(&opts),
        "udp" => udp(&opts),
        other => fail(&format!("unknown verb {other:?}")),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("sluice-netprobe: {msg}");
    std::process::exit(2)
}

fn options(args: &[String]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(name) = flag.strip_prefix("--") else {
            fail(&format!("unexpected argument {flag:?}"));
        };
        let Some(value) = it.next() else {
            fail(&format!("{flag} needs a value"));
        };
        out.insert(name.to_owned(), value.clone());
    }
    out
}

fn opt<T: std::str::FromStr>(opts: &HashMap<String, String>, name: &str) -> Option<T> {
    opts.get(name).map(|v| {
        v.parse()
            .unwrap_or_else(|_| fail(&format!("--{name}: cannot parse {v:?}")))
    })
}

fn required<T: std::str::FromStr>(opts: &HashMap<String, String>, name: &str) -> T {
    opt(opts, name).unwrap_or_else(|| fail(&format!("--{name} is required")))
}

// --- serve ---

fn serve(opts: &HashMap<String, String>) {
    let listen: String = required(opts, "listen");
    let name: String = required(opts, "name");
    let pin_dir: Option<PathBuf> = opt(opts, "pin-dir");
    let hold = Duration::from_millis(opt(opts, "hold-ms").unwrap_or(0));
    let listeners: Vec<TcpListener> = listen
        .split(',')
        .map(|a| {
            let addr: SocketAddr = a
                .parse()
                .unwrap_or_else(|_| fail(&format!("--listen {a:?}")));
            TcpListener::bind(addr).unwrap_or_else(|e| fail(&format!("bind {addr}: {e}")))
        })
        .collect();
    // The test waits for this line before it connects.
    let addrs: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.to_string()))
        .collect();
    println!("{}", json!({ "listening": addrs }));
    let _ = std::io::stdout().flush();
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let (name, pin_dir) = (name.clone(), pin_dir.clone());
            std::thread::spawn(move || accept_loop(&l, &name, pin_dir.as_deref(), hold))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn accept_loop(
    listener: &TcpListener,
    name: &str,
    pin_dir: Option<&std::path::Path>,
    hold: Duration,
) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        // Keeps the connection open for a while (for tests that look at live connections);
        // each one on its own thread so others are not held up.
        if !hold.is_zero() {
            let (name, pin_dir) = (name.to_owned(), pin_dir.map(std::path::Path::to_path_buf));
            std::thread::spawn(move || {
                let body = answer(&conn, &name, pin_dir.as_deref());
                std::thread::sleep(hold);
                reply(&mut conn, &body);
            });
            continue;
        }
        let body = answer(&conn, name, pin_dir);
        reply(&mut conn, &body);
    }
}

fn answer(conn: &TcpStream, name: &str, pin_dir: Option<&std::path::Path>) -> Value {
    let table = pin_dir.and_then(|d| OrigDstTable::open(d).ok());
    describe(conn, name, table.as_ref())
}

fn reply(conn: &mut TcpStream, body: &Value) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 2048];
    let _ = conn.read(&mut buf);
    let body = body.to_string();
    let reply = format!(
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes());
}

/// What the server side knows about an accepted connection.
fn describe(conn: &TcpStream, name: &str, table: Option<&OrigDstTable>) -> Value {
    let peer = conn.peer_addr().ok();
    let local = conn.local_addr().ok();
    let lookup = match (table, peer, local) {
        (Some(t), Some(p), Some(l)) => t
            .lookup(p, l)
            .map(|i| json!({"original_dst": i.original_dst.to_string(), "cgroup_id": i.cgroup_id})),
        _ => None,
    };
    let v6 = local.is_some_and(|l| l.is_ipv6());
    let sockopt = original_dst(conn.as_raw_fd(), v6, 128).ok();
    json!({
        "server": name,
        "peer": peer.map(|a| a.to_string()),
        "local": local.map(|a| a.to_string()),
        "lookup": lookup,
        "sockopt": sockopt,
    })
}

/// `getsockopt(SO_ORIGINAL_DST)` (or `IP6T_SO_ORIGINAL_DST`) with a buffer of `len` bytes.
fn original_dst(fd: i32, v6: bool, len: usize) -> Result<String, i32> {
    let mut buf = vec![0u8; len];
    let mut optlen = libc::socklen_t::try_from(len).unwrap_or(0);
    let level = if v6 { libc::SOL_IPV6 } else { libc::SOL_IP };
    // SAFETY: `buf` and `optlen` are valid for writes of the sizes passed.
    let rc = unsafe { libc::getsockopt(fd, level, 80, buf.as_mut_ptr().cast(), &raw mut optlen) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
    }
    let port = u16::from_be_bytes([buf[2], buf[3]]);
    let addr = if v6 {
        let mut a = [0u8; 16];
        a.copy_from_slice(&buf[8..24]);
        std::net::Ipv6Addr::from(a).to_canonical()
    } else {
        std::net::IpAddr::from([buf[4], buf[5], buf[6], buf[7]])
    };
    Ok(SocketAddr::new(addr, port).to_string())
}

// --- connect ---

fn connect_verb(opts: &HashMap<String, String>) {
    let to: SocketAddr = required(opts, "to");
    let mark: Option<u32> = opt(opts, "mark");
    let timeout = Duration::from_millis(opt(opts, "timeout-ms").unwrap_or(2000));
    let until: Option<String> = opt(opts, "until");
    let within = Duration::from_millis(opt(opts, "within-ms").unwrap_or(0));
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let mut result = attempt(to, mark, timeout);
        let reached = result
            .get("server")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let done = match &until {
            None => true,
            Some(want) => reached.as_deref() == Some(want.as_str()) || start.elapsed() >= within,
        };
        if done {
            result["attempts"] = json!(attempts);
            result["elapsed_ms"] = json!(start.elapsed().as_millis() as u64);
            println!("{result}");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `count` bare connects (connect, close), for load: how many succeeded, how long they took.
fn connects(opts: &HashMap<String, String>) {
    let to: SocketAddr = required(opts, "to");
    let count: u32 = required(opts, "count");
    let start = Instant::now();
    let ok = (0..count)
        .filter(|_| TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok())
        .count();
    println!(
        "{}",
        json!({"count": count, "ok": ok, "elapsed_ms": start.elapsed().as_millis() as u64})
    );
}

/// One connection: connect, send a request, read the answer.
fn attempt(to: SocketAddr, mark: Option<u32>, timeout: Duration) -> Value {
    let stream = match mark {
        Some(m) => Marked::new(m).connect_blocking(to, timeout),
        None => TcpStream::connect_timeout(&to, timeout),
    };
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => {
            return json!({"error": e.to_string(), "errno": e.raw_os_error(), "stage": "connect"});
        }
    };
    let local = stream.local_addr().ok().map(|a| a.to_string());
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if let Err(e) = stream.write_all(b"GET / HTTP/1.0\r\n\r\n") {
        return json!({"error": e.to_string(), "errno": e.raw_os_error(), "stage": "write"});
    }
    let mut out = Vec::new();
    if let Err(e) = stream.read_to_end(&mut out) {
        return json!({"error": e.to_string(), "errno": e.raw_os_error(), "stage": "read", "local": local});
    }
    let text = String::from_utf8_lossy(&out);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    match serde_json::from_str::<Value>(body) {
        Ok(mut v) => {
            v["client_local"] = json!(local);
            v
        }
        Err(_) => json!({"error": "not a netprobe answer", "raw": text, "stage": "parse"}),
    }
}

// --- udp ---

/// A connected UDP socket: where the kernel says it is connected to.
fn udp(opts: &HashMap<String, String>) {
    let to: SocketAddr = required(opts, "to");
    let bind: SocketAddr = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = std::net::UdpSocket::bind(bind).unwrap_or_else(|e| fail(&format!("bind: {e}")));
    let result = sock.connect(to).and_then(|()| sock.peer_addr());
    match result {
        Ok(peer) => println!("{}", json!({"peer": peer.to_string()})),
        Err(e) => println!(
            "{}",
            json!({"error": e.to_string(), "errno": e.raw_os_error()})
        ),
    }
}

// --- sockopts ---

/// Unrelated getsockopt calls, to compare inside and outside the proxy cgroup.
fn sockopts(opts: &HashMap<String, String>) {
    let to: SocketAddr = required(opts, "to");
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .unwrap_or_else(|e| fail(&format!("connect {to}: {e}")));
    let fd = stream.as_raw_fd();
    let tcp_info = |len: usize| -> Value {
        let mut buf = vec![0u8; len];
        let mut optlen = libc::socklen_t::try_from(len).unwrap_or(0);
        // SAFETY: `buf` and `optlen` are valid for writes of the sizes passed.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                buf.as_mut_ptr().cast(),
                &raw mut optlen,
            )
        };
        if rc == 0 {
            json!({"len": optlen})
        } else {
            json!({"errno": std::io::Error::last_os_error().raw_os_error()})
        }
    };
    let err = |r: Result<String, i32>| match r {
        Ok(a) => json!({"answer": a}),
        Err(e) => json!({"errno": e}),
    };
    println!(
        "{}",
        json!({
            "tcp_info": tcp_info(512),
            "tcp_info_large": tcp_info(16384),
            "original_dst": err(original_dst(fd, false, 16)),
            "original_dst_large": err(original_dst(fd, false, 16384)),
        })
    );
}
