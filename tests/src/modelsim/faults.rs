//! Faults armed per request by the `x-sim-fault` header (comma-separated), so they fire at a
//! deterministic point:
//!
//! | fault | effect |
//! |---|---|
//! | `reset_after_bytes=N` | cut the connection once the body passes N bytes (streams and JSON answers) |
//! | `hang_after_headers` | send the response head, then nothing (streams and JSON answers) |
//! | `chunked` | send a JSON answer chunked, in two pieces, instead of with a Content-Length |
//! | `no_usage` | ignore `include_usage` (Chat/Completions) |
//! | `bad_json_at=K` | event K (0-based, all events counted) is not JSON |
//! | `error_event_at=K` | after K tokens, the API's error event ends the stream |
//! | `long_line=N` | before the first token, one event whose `data:` line is N bytes |
//! | `delay_headers_ms=N` | wait before answering |
//! | `status=N` | answer with this error status |
//! | `close_before_headers` | close the connection without any response |

use std::time::Duration;

use http::HeaderMap;

#[derive(Debug, Default, Clone)]
pub struct Faults {
    pub reset_after_bytes: Option<usize>,
    pub hang_after_headers: bool,
    pub chunked: bool,
    pub no_usage: bool,
    pub bad_json_at: Option<u64>,
    pub error_event_at: Option<u64>,
    pub long_line: Option<usize>,
    pub delay_headers: Option<Duration>,
    pub status: Option<u16>,
    pub close_before_headers: bool,
}

// === impl Faults ===

impl Faults {
    /// The faults a request's headers arm; unknown names are ignored.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut faults = Self::default();
        let spec = headers
            .get("x-sim-fault")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        for item in spec.split(',').map(str::trim) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let n = value.parse::<u64>().ok();
            let size = value.parse::<usize>().ok();
            match key {
                "reset_after_bytes" => faults.reset_after_bytes = size,
                "hang_after_headers" => faults.hang_after_headers = true,
                "chunked" => faults.chunked = true,
                "no_usage" => faults.no_usage = true,
                "bad_json_at" => faults.bad_json_at = n,
                "error_event_at" => faults.error_event_at = n,
                "long_line" => faults.long_line = size,
                "delay_headers_ms" => faults.delay_headers = n.map(Duration::from_millis),
                "status" => faults.status = value.parse().ok(),
                "close_before_headers" => faults.close_before_headers = true,
                _ => {}
            }
        }
        faults
    }
}
