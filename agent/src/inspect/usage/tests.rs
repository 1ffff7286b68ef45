//! One recorded sample of every usage shape in `streaming-usage-shapes.md`, odd ones included.

use bytes::Bytes;

use super::*;
use crate::inspect::sse::{Relay, Verdict};

fn stream(sse: &str) -> Meter {
    let mut meter = Meter::new(Encoding::O200k);
    let mut relay = Relay::new(1 << 20, false);
    let mut on = |e: &Event<'_>| {
        meter.on_event(e);
        Verdict::Forward
    };
    relay.feed(Bytes::copy_from_slice(sse.as_bytes()), &mut on);
    relay.finish(&mut on);
    meter
}

fn body(json: &str) -> Meter {
    let mut meter = Meter::new(Encoding::O200k);
    meter.on_body(json.as_bytes());
    meter
}

fn usage(meter: &mut Meter) -> Usage {
    meter.usage(|| 999)
}

const fn exact(input_tokens: u64, output_tokens: u64) -> Usage {
    Usage {
        input_tokens,
        output_tokens,
        estimated: false,
    }
}

#[test]
fn chat_stream_with_a_final_usage_chunk() {
    let mut m = stream(concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1,\"total_tokens\":10,",
        "\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
        "data: [DONE]\n\n"
    ));
    assert!(m.done);
    assert!(m.first_token_at.is_some());
    assert_eq!(usage(&mut m), exact(9, 1));
}

#[test]
fn usage_on_the_last_chunk_with_choices() {
    let mut m = stream(concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"b\"},\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
        "data: [DONE]\n\n"
    ));
    assert_eq!(usage(&mut m), exact(3, 2));
}

#[test]
fn continuous_usage_takes_the_last() {
    let mut m = stream(concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
    ));
    assert_eq!(m.running_output(), 2);
    assert_eq!(usage(&mut m), exact(3, 2));
}

#[test]
fn completions_stream_without_usage_is_counted() {
    let mut m = stream(concat!(
        "data: {\"object\":\"text_completion\",\"choices\":[{\"text\":\" hello\"}]}\n\n",
        "data: {\"object\":\"text_completion\",\"choices\":[{\"text\":\" world\"}]}\n\n",
        "data: [DONE]\n\n"
    ));
    assert_eq!(m.running_output(), 2);
    assert_eq!(
        usage(&mut m),
        Usage {
            input_tokens: 999,
            output_tokens: 2,
            estimated: true
        }
    );
}

#[test]
fn chat_tool_call_and_reasoning_deltas_are_counted() {
    let mut m = stream(concat!(
        "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\" think\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"q\\\"\"}}]}}]}\n\n",
    ));
    assert_eq!(m.output_tokens().0, Encoding::O200k.count(" think{\"q\""));
}

#[test]
fn responses_stream_terminal_events() {
    for terminal in [
        "response.completed",
        "response.incomplete",
        "response.failed",
    ] {
        let mut m = stream(&format!(
            concat!(
                "event: response.created\ndata: {{\"type\":\"response.created\",\"response\":{{\"usage\":null}}}}\n\n",
                "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}}\n\n",
                "event: {t}\ndata: {{\"type\":\"{t}\",\"response\":{{\"output\":[],\"usage\":{{\"input_tokens\":11,",
                "\"input_tokens_details\":{{\"cached_tokens\":4}},\"output_tokens\":7,",
                "\"output_tokens_details\":{{\"reasoning_tokens\":5}},\"total_tokens\":18}}}}}}\n\n"
            ),
            t = terminal
        ));
        assert!(m.done, "{terminal}");
        assert_eq!(usage(&mut m), exact(11, 7), "{terminal}");
    }
}

#[test]
fn anthropic_stream_is_cumulative_and_keeps_input() {
    let mut m = stream(concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":",
        "{\"input_tokens\":20,\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":3,\"output_tokens\":1}}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":30}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ));
    assert!(m.done);
    assert_eq!(
        usage(&mut m),
        exact(28, 30),
        "cached input counts; output is the last value"
    );
}

#[test]
fn anthropic_error_mid_stream_keeps_what_was_produced() {
    let mut m = stream(concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":4,\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\" hello\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\" world again\"}}\n\n",
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    ));
    assert!(m.upstream_error);
    // message_start's `output_tokens: 1` is provisional: the three generated tokens count.
    assert_eq!(
        usage(&mut m),
        Usage {
            input_tokens: 4,
            output_tokens: 3,
            estimated: true,
        }
    );
}

#[test]
fn openai_error_event_after_content() {
    let mut m = stream(concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\" hello\"}}]}\n\n",
        "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n",
    ));
    assert!(m.upstream_error);
    assert!(!m.done);
    assert_eq!(m.output_tokens(), (1, true));
}

#[test]
fn non_streaming_bodies() {
    let mut chat = body(
        r#"{"id":"c","object":"chat.completion","choices":[{"message":{"role":"assistant","content":"Hi"}}],
            "usage":{"prompt_tokens":8,"completion_tokens":2,"total_tokens":10}}"#,
    );
    assert_eq!(usage(&mut chat), exact(8, 2));
    let mut embeddings = body(
        r#"{"object":"list","data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":6,"total_tokens":6}}"#,
    );
    assert_eq!(usage(&mut embeddings), exact(6, 0));
    let mut messages = body(
        r#"{"type":"message","content":[{"type":"text","text":"Hi"}],"usage":{"input_tokens":10,"output_tokens":3}}"#,
    );
    assert_eq!(usage(&mut messages), exact(10, 3));
    let mut responses = body(
        r#"{"object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"Hi"}]}],
            "usage":{"input_tokens":5,"output_tokens":1,"total_tokens":6}}"#,
    );
    assert_eq!(usage(&mut responses), exact(5, 1));
    // No usage: the text is counted.
    let mut bare = body(r#"{"choices":[{"message":{"content":"hello world"}}]}"#);
    assert_eq!(bare.output_tokens(), (2, true));
    let mut bare =
        body(r#"{"output":[{"content":[{"type":"output_text","text":"hello world"}]}]}"#);
    assert_eq!(bare.output_tokens(), (2, true));
}

#[test]
fn garbage_is_counted_not_fatal() {
    let m = stream("data: {not json\n\ndata: \u{1}\n\n");
    assert_eq!(m.parse_errors, 2);
}
