use bytes::Bytes;
use http::Method;
use serde_json::Value;

use super::*;
use crate::admission::PromptTokens as _;

fn chat(body: &str) -> Result<InferenceRequest, Error> {
    parse(Api::ChatCompletions, body.as_bytes(), &Limits::default())
}

fn nested(depth: usize) -> String {
    // depth counts the top-level object.
    let inner = "[".repeat(depth - 1) + &"]".repeat(depth - 1);
    format!(r#"{{"model":"m","x":{inner}}}"#)
}

#[test]
fn classifies_inference_routes_only_for_post() {
    assert_eq!(
        classify(&Method::POST, "/v1/chat/completions"),
        Some(Api::ChatCompletions)
    );
    assert_eq!(classify(&Method::POST, "/v1/messages"), Some(Api::Messages));
    assert_eq!(classify(&Method::GET, "/v1/chat/completions"), None);
    assert_eq!(classify(&Method::POST, "/v1/models"), None);
    assert_eq!(classify(&Method::POST, "/v1/chat/completions/x"), None);
}

#[test]
fn reads_the_typed_view() {
    let r = chat(
        r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},
            "max_completion_tokens":50,"max_tokens":9,"n":2,"user":"u1",
            "messages":[{"role":"system","content":"be brief"},
                        {"role":"user","content":[{"type":"text","text":"hello"},
                                                  {"type":"image_url","image_url":{"url":"data:xyz"}}]}]}"#,
    )
    .unwrap();
    assert_eq!(r.model, "gpt-4o");
    assert!(r.stream && r.include_usage);
    assert_eq!(
        r.max_output_tokens,
        Some(100),
        "max_completion_tokens wins, times n"
    );
    assert_eq!(r.user.as_deref(), Some("u1"));
    assert_eq!(r.prompt.text, "be brief\nhello");
    assert_eq!(r.prompt.items, 2);
    assert_eq!(r.usage_splice, None, "the client asked for usage itself");
}

#[test]
fn prompt_text_covers_every_input_shape() {
    let cases: &[(Api, &str, &[&str])] = &[
        (
            Api::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"function",
                "function":{"name":"lookup","arguments":"{\"q\":\"SECRET1\"}"}}]}],
                "tools":[{"type":"function","function":{"name":"f","description":"SECRET2"}}]}"#,
            &["SECRET1", "SECRET2", "lookup"],
        ),
        (
            Api::Messages,
            r#"{"model":"claude","max_tokens":5,"system":[{"type":"text","text":"SECRET1"}],
                "messages":[{"role":"user","content":[{"type":"text","text":"SECRET2"},
                {"type":"tool_result","tool_use_id":"t","content":"SECRET3"}]}]}"#,
            &["SECRET1", "SECRET2", "SECRET3"],
        ),
        (
            Api::Responses,
            r#"{"model":"gpt-4o","instructions":"SECRET1","input":[{"role":"user",
                "content":[{"type":"input_text","text":"SECRET2"}]}]}"#,
            &["SECRET1", "SECRET2"],
        ),
        (
            Api::Completions,
            r#"{"model":"m","prompt":["SECRET1","SECRET2"],"suffix":"SECRET3"}"#,
            &["SECRET1", "SECRET2", "SECRET3"],
        ),
        (
            Api::Embeddings,
            r#"{"model":"m","input":["SECRET1",{"nested":"SECRET2"}]}"#,
            &["SECRET1", "SECRET2"],
        ),
    ];
    for (api, body, needles) in cases {
        let r = parse(*api, body.as_bytes(), &Limits::default()).unwrap();
        for needle in *needles {
            assert!(
                r.prompt.text.contains(needle),
                "{api:?}: {needle} missing from {:?}",
                r.prompt.text
            );
        }
    }
}

#[test]
fn token_id_prompts_count_exactly() {
    let r = parse(
        Api::Completions,
        br#"{"model":"m","prompt":[1,2,3,4],"max_tokens":7,"best_of":3,"n":2}"#,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(r.prompt.token_ids, 4);
    assert_eq!(r.prompt.exact(), 4);
    assert_eq!(r.max_output_tokens, Some(21), "best_of are all generated");
    let r = parse(
        Api::Completions,
        br#"{"model":"m","prompt":"x"}"#,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(r.max_output_tokens, Some(16), "the Completions default");
    let r = parse(
        Api::Embeddings,
        br#"{"model":"m","input":"x"}"#,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(r.max_output_tokens, Some(0));
}

#[test]
fn prompt_tokens_bound_and_count() {
    let r =
        chat(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello world"}]}"#).unwrap();
    assert_eq!(
        r.prompt.exact(),
        2 + 4,
        "2 text tokens + one message's template"
    );
    assert!(r.prompt.upper_bound() >= r.prompt.exact());
}

#[test]
fn duplicate_keys_are_rejected_at_every_depth() {
    for body in [
        r#"{"model":"cheap","messages":[],"model":"expensive"}"#,
        r#"{"model":"m","stream":false,"stream":true}"#,
        r#"{"model":"m","max_tokens":1,"max_tokens":100000}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"a","content":"b"}]}"#,
        r#"{"model":"m","x":{"y":[{"z":{"k":1,"k":2}}]}}"#,
        r#"{"model":"m","mod\u0065l":"other"}"#,
    ] {
        let err = chat(body).unwrap_err();
        assert!(
            matches!(err, Error::Json(json::Error::DuplicateKey { .. })),
            "{body}: {err:?}"
        );
        assert_eq!(err.code(), "duplicate_key");
    }
    // Many keys take the set path, not a quadratic scan.
    let mut body = String::from(r#"{"model":"m""#);
    for i in 0..5000 {
        body.push_str(&format!(r#","k{i}":0"#));
    }
    body.push_str(r#","k4999":1}"#);
    assert!(matches!(
        chat(&body),
        Err(Error::Json(json::Error::DuplicateKey { key })) if key == "k4999"
    ));
}

#[test]
fn nesting_is_bounded() {
    let limits = Limits::default();
    assert!(chat(&nested(limits.max_json_depth)).is_ok());
    assert!(matches!(
        chat(&nested(limits.max_json_depth + 1)),
        Err(Error::Json(json::Error::TooDeep { .. }))
    ));
    // Far past serde_json's own limit: an error, never a stack overflow.
    assert!(matches!(
        chat(&nested(100_000)),
        Err(Error::Json(json::Error::TooDeep { .. }))
    ));
}

#[test]
fn malformed_bodies_are_errors() {
    for (body, code) in [
        ("", "invalid_json"),
        ("{", "invalid_json"),
        (r#"{"model":"m"} x"#, "invalid_json"),
        (r#"[{"model":"m"}]"#, "invalid_json"),
        (r#""model""#, "invalid_json"),
        (r#"{"model":"m","n":1e999}"#, "invalid_json"),
        (r#"{"model":"m","x":"\ud800"}"#, "invalid_json"),
        (r#"{"messages":[]}"#, "invalid_field"),
        (r#"{"model":7}"#, "invalid_field"),
        (r#"{"model":"m","stream":"yes"}"#, "invalid_field"),
        (r#"{"model":"m","max_tokens":-1}"#, "invalid_field"),
        (r#"{"model":"m","stream_options":3}"#, "invalid_field"),
    ] {
        let err = chat(body).unwrap_err();
        assert_eq!(err.code(), code, "{body}: {err}");
    }
    assert_eq!(
        parse(
            Api::ChatCompletions,
            b"{\"model\":\"\xff\"}",
            &Limits::default()
        )
        .unwrap_err()
        .code(),
        "invalid_json"
    );
}

fn injected(body: &str) -> (InferenceRequest, String) {
    let r = chat(body).unwrap();
    let out = with_usage_requested(&r, Bytes::copy_from_slice(body.as_bytes()));
    (r, String::from_utf8(out.to_vec()).unwrap())
}

#[test]
fn include_usage_is_spliced_without_moving_anything_else() {
    let body =
        r#"{"zeta":1,"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}  "#;
    let (r, out) = injected(body);
    assert!(!r.include_usage);
    assert_eq!(
        out,
        r#"{"zeta":1,"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}  "#
    );
    for (body, expect) in [
        (
            r#"{"model":"m","stream":true,"stream_options":null,"a":1}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"a":1}"#,
        ),
        (
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false},"a":1}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"a":1}"#,
        ),
        (
            r#"{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":false}}"#,
            r#"{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":false,"include_usage":true}}"#,
        ),
        // The span is found by the key's meaning (an escaped key), whitespace kept around it.
        (
            r#"{"model":"m", "stream":true, "stream_\u006fptions" : { } , "a":"}"}"#,
            r#"{"model":"m", "stream":true, "stream_\u006fptions" : {"include_usage":true} , "a":"}"}"#,
        ),
    ] {
        let (_, out) = injected(body);
        assert_eq!(out, expect);
        // The rewritten body is itself strict JSON with the same fields.
        let a: Value = serde_json::from_str(body).unwrap();
        let b: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(a["a"], b["a"]);
    }
    // Not streaming, or already asking: untouched.
    for body in [
        r#"{"model":"m","stream":false}"#,
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
    ] {
        assert_eq!(injected(body).1, body);
    }
    // Responses and Messages streams always carry usage: untouched.
    let body = br#"{"model":"m","stream":true,"input":"x"}"#;
    let r = parse(Api::Responses, body, &Limits::default()).unwrap();
    assert_eq!(
        &with_usage_requested(&r, Bytes::from_static(body))[..],
        body
    );
}
