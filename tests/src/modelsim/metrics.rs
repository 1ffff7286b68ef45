//! The simulator's `/metrics` page, with vLLM's metric names (what sluice's picker scrapes).

use std::sync::atomic::Ordering;

use super::{SimConfig, State};

/// The Prometheus text exposition of the simulator's state.
pub(super) fn render(config: &SimConfig, state: &State) -> String {
    let m = &config.model;
    let running = state.running.load(Ordering::SeqCst).max(0);
    format!(
        "# TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{model_name=\"{m}\"}} {running}\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"{m}\"}} 0\n\
         # TYPE vllm:kv_cache_usage_perc gauge\n\
         vllm:kv_cache_usage_perc{{model_name=\"{m}\"}} {kv}\n\
         # TYPE vllm:prompt_tokens_total counter\n\
         vllm:prompt_tokens_total{{model_name=\"{m}\"}} {prompt}\n\
         # TYPE vllm:generation_tokens_total counter\n\
         vllm:generation_tokens_total{{model_name=\"{m}\"}} {generated}\n\
         # TYPE vllm:request_success_total counter\n\
         vllm:request_success_total{{model_name=\"{m}\",finished_reason=\"length\"}} {success}\n",
        kv = (running as f64 / 256.0).min(1.0),
        prompt = state.prompt.load(Ordering::SeqCst),
        generated = state.generated.load(Ordering::SeqCst),
        success = state.success.load(Ordering::SeqCst),
    )
}
