//! The datapath's per-CPU counters as Prometheus counters, read from the map at scrape time.

use std::sync::Mutex;

use prometheus::{
    IntCounterVec, Opts,
    core::{Collector, Desc},
    proto::MetricFamily,
};
use tracing::warn;

use super::counters::Counters;

/// Exports `sluice_datapath_connections_total{reason}`. The map is the source of truth (it
/// survives agent restarts through its pin); the collector adds what the kernel counted since
/// the previous scrape, so the Prometheus counter only ever grows.
pub struct CounterCollector {
    counters: Counters,
    exported: IntCounterVec,
    last: Mutex<Vec<(&'static str, u64)>>,
}

// === impl CounterCollector ===

impl CounterCollector {
    pub fn new(counters: Counters) -> Self {
        let exported = IntCounterVec::new(
            Opts::new(
                "sluice_datapath_connections_total",
                "TCP connects seen by the datapath programs, by what happened to them (per-CPU map, summed)",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| unreachable!("static metric options are valid: {e}"));
        Self {
            counters,
            exported,
            last: Mutex::new(Vec::new()),
        }
    }

    fn refresh(&self) {
        let readings = match self.counters.read() {
            Ok(r) => r,
            Err(error) => {
                warn!(%error, component = "datapath", "reading COUNTERS for /metrics");
                return;
            }
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        for reading in readings {
            let before = last
                .iter()
                .find(|(name, _)| *name == reading.counter)
                .map_or(0, |(_, v)| *v);
            // A smaller value means the map was replaced (a migration); count from zero again.
            let delta = reading.total.checked_sub(before).unwrap_or(reading.total);
            self.exported
                .with_label_values(&[reading.counter])
                .inc_by(delta);
            match last.iter_mut().find(|(name, _)| *name == reading.counter) {
                Some(slot) => slot.1 = reading.total,
                None => last.push((reading.counter, reading.total)),
            }
        }
    }
}

impl Collector for CounterCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.exported.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        self.exported.collect()
    }
}
