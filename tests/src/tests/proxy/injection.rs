//! Injection through the request: hostile model names (faults #40: CR, LF, NUL, path and
//! query characters, 10 KB) end in a clean 400/404 and never split a header or a metric line;
//! internal and forwarding headers a client writes (#41) never reach the server.

use std::{net::SocketAddr, sync::Arc};

use sluice::proxy::route::{Route, RouteError, RouteRequest};

use super::{CHAT, curl, json};
use crate::{
    loopback::{CLIENT, TestProxy, test_config},
    modelsim::{ModelSim, SimConfig},
};

const JSON: &str = "content-type: application/json";

/// Routes only the one model the simulator serves.
struct KnownModel;

impl Route for KnownModel {
    fn route(&self, request: &RouteRequest<'_>) -> Result<SocketAddr, RouteError> {
        if request.model == "llama-3-8b" {
            return Ok(request.original_dst);
        }
        Err(RouteError::ModelNotFound {
            model: request.model.to_owned(),
        })
    }
}

const HOSTILE_MODELS: [&str; 7] = [
    "a\r\nx-injected: 1",
    "a\nb",
    "a\u{0}b",
    "../../v1/admin",
    "a?b#c%0d%0a",
    "llama-3-8b\r\n",
    "",
];

#[test]
fn hostile_model_names_are_refused_cleanly() {
    let sim = ModelSim::start(SimConfig {
        reject_unknown_models: true,
        ..SimConfig::default()
    });
    let routed = TestProxy::start_with(test_config(), sim.addr(), |mut d| {
        d.router = Arc::new(KnownModel);
        d
    });
    let transparent = TestProxy::start(test_config(), sim.addr());
    let long = "m".repeat(10 << 10);
    let names = HOSTILE_MODELS.iter().copied().chain([long.as_str()]);
    for model in names {
        let body = serde_json::json!({"model": model, "messages": []}).to_string();
        for (proxy, kind) in [(&routed, "routing"), (&transparent, "the model server")] {
            let r = curl(
                &[
                    "-H",
                    JSON,
                    "--data-binary",
                    "@-",
                    &proxy.url("/v1/chat/completions"),
                ],
                Some(body.as_bytes()),
            );
            let expected = if model.is_empty() { 400 } else { 404 };
            assert_eq!(r.status, expected, "{model:.40?} through {kind}: {r:?}");
            assert!(
                !r.headers.to_ascii_lowercase().contains("x-injected"),
                "{}",
                r.headers
            );
            let error = json(&r.body);
            assert!(error["error"]["message"].is_string(), "{}", r.body);
        }
    }
    // Raw control characters are not JSON at all.
    let raw = "{\"model\":\"a\r\nx-injected: 1\",\"messages\":[]}";
    let r = curl(
        &[
            "-H",
            JSON,
            "--data-binary",
            "@-",
            &transparent.url("/v1/chat/completions"),
        ],
        Some(raw.as_bytes()),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(json(&r.body)["error"]["code"], "invalid_json");
    // Only the transparent proxy forwarded them (the server said 404); none became a metric
    // label that splits a line, and the 10 KB name is no label at all.
    for proxy in [&routed, &transparent] {
        let metrics = proxy.metrics();
        assert!(!metrics.contains(&long), "a 10 KB label");
        assert!(
            metrics.lines().all(|l| !l.starts_with("x-injected")),
            "a label split a line:\n{metrics}"
        );
        assert_eq!(
            curl(
                &[
                    "-H",
                    JSON,
                    "--data-binary",
                    CHAT,
                    &proxy.url("/v1/chat/completions")
                ],
                None
            )
            .status,
            200,
            "still serving"
        );
    }
}

#[test]
fn spoofed_internal_and_forwarding_headers_never_reach_the_server() {
    let sim = ModelSim::start(SimConfig::default());
    let proxy = TestProxy::start(test_config(), sim.addr());
    let spoofed = [
        "x-sluice-tenant: team-evil",
        "x-sluice-decision: allow",
        "x-forwarded-for: 6.6.6.6",
        "forwarded: for=6.6.6.6",
        "x-real-ip: 6.6.6.6",
    ];
    let mut args: Vec<&str> = Vec::new();
    for h in &spoofed {
        args.extend(["-H", h]);
    }
    let chat_url = proxy.url("/v1/chat/completions");
    let mut chat = args.clone();
    chat.extend(["-H", JSON, "--data-binary", CHAT, &chat_url]);
    assert_eq!(curl(&chat, None).status, 200);
    let echo_url = proxy.url("/echo");
    let mut echo = args.clone();
    echo.extend(["--data-binary", "x", &echo_url]);
    let r = curl(&echo, None);
    assert_eq!(r.status, 200, "{r:?}");

    let echoed = r
        .headers
        .lines()
        .find_map(|l| l.strip_prefix("x-echo-headers: "))
        .unwrap_or_else(|| panic!("{}", r.headers));
    let echoed = json(echoed);
    let inference = &sim.records()[0].headers;
    for (path, get) in [
        (
            "inference",
            Box::new(|name: &str| {
                inference
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            }) as Box<dyn Fn(&str) -> Option<String>>,
        ),
        (
            "passthrough",
            Box::new(|name: &str| echoed[name].as_str().map(str::to_owned)),
        ),
    ] {
        for name in [
            "x-sluice-tenant",
            "x-sluice-decision",
            "forwarded",
            "x-real-ip",
        ] {
            assert_eq!(get(name), None, "{path}: {name} reached the server");
        }
        assert_eq!(
            get("x-forwarded-for").as_deref(),
            Some(CLIENT),
            "{path}: the client's real address, not the claimed one"
        );
    }
}
