//! `sluice inspect quotas`: the node's token-budget state as the agent mirrors it into `QUOTA`
//! (one row per tenant, budget, window and dimension, plus each tenant refused at connect).

use std::{path::Path, time::SystemTime};

use serde::Serialize;
use sluice_common::quota::{
    DIMENSION_CONNECT, Dimension, FLAG_CLUSTER, FLAG_DEGRADED, FLAG_ENFORCE_CONNECT,
    FLAG_EXHAUSTED, QuotaKey, QuotaValue, decode_name,
};

use super::{Error, table::Table};
use crate::{datapath::QuotaMap, quota::Window};

/// One `QUOTA` entry.
#[derive(Debug, Serialize)]
pub struct QuotaView {
    pub tenant: String,
    pub tenant_id: String,
    /// `name` or `name/model`; empty for a connect entry.
    pub budget: String,
    pub budget_id: String,
    /// `1m`, `1d`; empty for a connect entry.
    pub window: String,
    /// `input_tokens`, `output_tokens`, `total_tokens`, `requests` or `connect`.
    pub dimension: String,
    pub limit: u64,
    pub used: u64,
    pub reserved: u64,
    pub remaining: u64,
    /// Cluster budgets: what this node holds a claim on in the cluster store.
    pub lease: u64,
    pub debt: u64,
    /// End of the current window, Unix milliseconds.
    pub window_end_ms: u64,
    pub flags: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
struct QuotasView {
    capacity: u32,
    entries: Vec<QuotaView>,
}

pub(super) fn quotas(dir: &Path, json: bool) -> Result<String, Error> {
    let map = QuotaMap::open(dir)?;
    let entries = map.entries().map_err(|source| Error::Info {
        map: sluice_common::map_names::QUOTA,
        source,
    })?;
    let mut rows: Vec<QuotaView> = entries.iter().map(|(k, v)| view(&k.0, v)).collect();
    rows.sort_by(|a, b| {
        (&a.tenant, &a.budget, window_secs(a), &a.dimension).cmp(&(
            &b.tenant,
            &b.budget,
            window_secs(b),
            &b.dimension,
        ))
    });
    if json {
        let view = QuotasView {
            capacity: map.capacity(),
            entries: rows,
        };
        return Ok(serde_json::to_string_pretty(&view)?);
    }
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut t = Table::new([
        "TENANT",
        "BUDGET",
        "WINDOW",
        "DIMENSION",
        "LIMIT",
        "USED",
        "RESERVED",
        "REMAINING",
        "WINDOW END",
        "FLAGS",
    ]);
    for r in &rows {
        let connect = r.dimension == "connect";
        let dash = |v: u64| {
            if connect {
                "-".to_owned()
            } else {
                v.to_string()
            }
        };
        t.row([
            r.tenant.clone(),
            or_dash(&r.budget),
            or_dash(&r.window),
            r.dimension.clone(),
            dash(r.limit),
            dash(r.used),
            dash(r.reserved),
            dash(r.remaining),
            window_end(r.window_end_ms, now_ms),
            if r.flags.is_empty() {
                "-".to_owned()
            } else {
                r.flags.join(",")
            },
        ]);
    }
    Ok(format!(
        "{}{} of {} entries\n",
        t.render(),
        rows.len(),
        map.capacity()
    ))
}

fn view(k: &QuotaKey, v: &QuotaValue) -> QuotaView {
    let connect = k.dimension == DIMENSION_CONNECT;
    let dimension = if connect {
        "connect".to_owned()
    } else {
        Dimension::from_u32(k.dimension)
            .map_or_else(|| k.dimension.to_string(), |d| d.label().to_owned())
    };
    let window =
        Window::from_secs(u64::from(k.window_secs)).map_or_else(String::new, |w| w.to_string());
    QuotaView {
        tenant: decode_name(&v.tenant),
        tenant_id: format!("{:016x}", k.tenant_id),
        budget: decode_name(&v.budget),
        budget_id: format!("{:016x}", k.budget_id),
        window,
        dimension,
        limit: v.limit,
        used: v.used,
        reserved: v.reserved,
        remaining: v.remaining(),
        lease: v.lease,
        debt: v.debt,
        window_end_ms: v.window_end_ms,
        flags: flags(v.flags),
    }
}

fn flags(bits: u32) -> Vec<&'static str> {
    [
        (FLAG_EXHAUSTED, "exhausted"),
        (FLAG_ENFORCE_CONNECT, "enforce-connect"),
        (FLAG_CLUSTER, "cluster"),
        (FLAG_DEGRADED, "degraded"),
    ]
    .into_iter()
    .filter_map(|(bit, name)| (bits & bit != 0).then_some(name))
    .collect()
}

fn window_secs(r: &QuotaView) -> u64 {
    r.window.parse::<Window>().map_or(0, |w: Window| w.secs())
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// `2026-05-20T10:01:00Z (in 42s)`.
fn window_end(end_ms: u64, now_ms: u64) -> String {
    let at = i64::try_from(end_ms)
        .ok()
        .and_then(|ms| k8s_openapi::jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| end_ms.to_string(), |t| format!("{t:.0}"));
    let left = end_ms.saturating_sub(now_ms);
    format!(
        "{at} (in {})",
        crate::quota::headers::duration(std::time::Duration::from_millis(left))
    )
}

#[cfg(test)]
mod tests {
    use sluice_common::quota::encode_name;

    use super::*;

    #[test]
    fn entries_read_as_people_and_scripts_expect() {
        let v = QuotaValue {
            limit: 100,
            used: 60,
            reserved: 50,
            window_end_ms: 1_779_271_260_000,
            flags: FLAG_EXHAUSTED | FLAG_CLUSTER,
            tenant: encode_name("team-a"),
            budget: encode_name("per-tenant"),
            ..QuotaValue::default()
        };
        let k = QuotaKey {
            tenant_id: 1,
            budget_id: 2,
            window_secs: 60,
            dimension: Dimension::TotalTokens as u32,
        };
        let row = view(&k, &v);
        assert_eq!(
            (
                row.tenant.as_str(),
                row.budget.as_str(),
                row.window.as_str(),
                row.dimension.as_str()
            ),
            ("team-a", "per-tenant", "1m", "total_tokens")
        );
        assert_eq!(
            (row.remaining, row.flags.clone()),
            (0, vec!["exhausted", "cluster"])
        );
        let connect = view(&sluice_common::quota::connect_key(1), &v);
        assert_eq!(
            (connect.dimension.as_str(), connect.window.as_str()),
            ("connect", "")
        );
        assert_eq!(
            window_end(1_779_271_260_000, 1_779_271_218_000),
            "2026-05-20T10:01:00Z (in 42s)"
        );
    }
}
