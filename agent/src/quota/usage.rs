//! What each budget has counted in its current windows, per tenant (and model): the numbers a
//! budget's status reports.

use sluice_common::quota::Dimension;

use super::{Quota, config::Window};

/// One instance's counts in one window: settled usage plus reservations in flight (what the
/// budget counts against its limit now). Dimensions the budget does not limit are 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BudgetCounts {
    pub tenant: String,
    /// Per-model budgets only.
    pub model: Option<String>,
    pub window: Option<Window>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub requests: u64,
}

// === impl Quota ===

impl Quota {
    /// The counts of budget `name`, per tenant, model and window, busiest first.
    pub fn usage(&self, name: &str) -> Vec<BudgetCounts> {
        let inner = &self.inner;
        let now = inner.clock.now_ms();
        let mut out: Vec<BudgetCounts> = Vec::new();
        for instance in inner.registry.all() {
            let model = match instance.display.split_once('/') {
                Some((budget, model)) if budget == name => Some(model.to_owned()),
                None if instance.display == name => None,
                _ => continue,
            };
            let mut state = instance.lock();
            if state.retired {
                continue;
            }
            for counter in &mut state.counters {
                counter.roll(now);
                let index = match out.iter().position(|c| {
                    c.tenant == *instance.tenant.name
                        && c.model == model
                        && c.window == Some(counter.window)
                }) {
                    Some(i) => i,
                    None => {
                        out.push(BudgetCounts {
                            tenant: instance.tenant.name.clone().into_owned(),
                            model: model.clone(),
                            window: Some(counter.window),
                            ..BudgetCounts::default()
                        });
                        out.len() - 1
                    }
                };
                let counts = &mut out[index];
                let n = counter.charged();
                match counter.dim {
                    Dimension::InputTokens => counts.input_tokens = n,
                    Dimension::OutputTokens => counts.output_tokens = n,
                    Dimension::TotalTokens => counts.total_tokens = n,
                    Dimension::Requests => counts.requests = n,
                }
            }
        }
        out.sort_by(|a, b| {
            let weight = |c: &BudgetCounts| {
                (
                    c.total_tokens.max(c.input_tokens + c.output_tokens),
                    c.requests,
                )
            };
            weight(b)
                .cmp(&weight(a))
                .then_with(|| a.tenant.cmp(&b.tenant))
        });
        out
    }
}
