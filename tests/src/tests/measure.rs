//! A throwaway measurement for tuning (not a test, not the benchmark harness: that is
//! `cargo xtask bench`). Run: `cargo test --release -p sluice-tests -- --ignored measure --nocapture`.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use sluice::{
    admission::Api,
    inspect::{self, Encoding},
};

use crate::{
    loopback::{CLIENT, TestProxy, test_config},
    modelsim::{ModelSim, SimConfig},
    tests::proxy::connect_from,
};

fn chat_1k() -> String {
    let head = r#"{"model":"llama-3-8b","max_tokens":16,"messages":[{"role":"user","content":""#;
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    let mut body = format!("{head}{}\"}}]}}", &text[..1024 - head.len() - 5]);
    body.truncate(body.len());
    body
}

async fn run(
    addr: SocketAddr,
    body: &str,
    conns: usize,
    secs: f64,
    stream: bool,
) -> (Vec<Duration>, f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let body = body.to_owned();
        tasks.push(tokio::spawn(async move {
            let io = connect_from(CLIENT, addr).await;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            tokio::spawn(conn);
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let req = Request::post("/v1/chat/completions")
                    .header("host", "m")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.clone())))
                    .unwrap_or_else(|e| panic!("{e}"));
                let t = Instant::now();
                let resp = sender
                    .send_request(req)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let mut b = resp.into_body();
                if stream {
                    let _ = b.frame().await;
                    lat.push(t.elapsed());
                    while b.frame().await.is_some() {}
                } else {
                    let _ = b.collect().await;
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    let start = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_else(|e| panic!("{e}")));
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort();
    (all, rate)
}

fn pct(v: &[Duration], p: f64) -> Duration {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

#[test]
#[ignore = "a measurement, run by hand"]
fn measure() {
    // Tokenizer cost.
    let prose = "The committee reviewed the proposal in detail and found it sound. ".repeat(1000);
    let code =
        "fn main() { let x: Vec<u32> = (0..10).map(|i| i * 2).collect(); println!(\"{x:?}\"); }\n"
            .repeat(800);
    for enc in [Encoding::O200k, Encoding::Cl100k] {
        enc.warm();
        for (name, text) in [("prose", &prose), ("code", &code)] {
            let t = Instant::now();
            let n = 20;
            for _ in 0..n {
                std::hint::black_box(enc.count(text));
            }
            let per_kib = t.elapsed().as_secs_f64() * 1e6 / n as f64 / (text.len() as f64 / 1024.0);
            println!("tokenizer {} {name}: {per_kib:.1} µs/KiB", enc.name());
        }
    }
    let body = chat_1k();
    let t = Instant::now();
    for _ in 0..10_000 {
        std::hint::black_box(
            inspect::parse(
                Api::ChatCompletions,
                body.as_bytes(),
                &inspect::Limits::default(),
            )
            .ok(),
        );
    }
    println!(
        "parse 1 KiB chat body: {:.1} µs",
        t.elapsed().as_secs_f64() * 1e6 / 10_000.0
    );

    let sim = ModelSim::start(SimConfig {
        workers: 1,
        ..SimConfig::default()
    });
    let proxy = TestProxy::start(test_config(), sim.addr());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        for conns in [1, 8] {
            let (d, dr) = run(sim.addr(), &body, conns, 3.0, false).await;
            let (p, pr) = run(proxy.addr, &body, conns, 3.0, false).await;
            println!(
                "{conns} conns non-stream: direct p50 {:?} p99 {:?} {dr:.0}/s | proxy p50 {:?} p99 {:?} {pr:.0}/s | added p50 {:?} p99 {:?} | throughput {:.0}%",
                pct(&d, 0.5), pct(&d, 0.99), pct(&p, 0.5), pct(&p, 0.99),
                pct(&p, 0.5).saturating_sub(pct(&d, 0.5)), pct(&p, 0.99).saturating_sub(pct(&d, 0.99)),
                pr / dr * 100.0
            );
        }
        let sbody = body.replace("\"max_tokens\":16", "\"max_tokens\":16,\"stream\":true");
        let (d, _) = run(sim.addr(), &sbody, 1, 3.0, true).await;
        let (p, _) = run(proxy.addr, &sbody, 1, 3.0, true).await;
        println!(
            "stream first frame: direct p50 {:?} | proxy p50 {:?} | added {:?}",
            pct(&d, 0.5), pct(&p, 0.5), pct(&p, 0.5).saturating_sub(pct(&d, 0.5))
        );
    });
}
