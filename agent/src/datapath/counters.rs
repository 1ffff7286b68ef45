//! The per-CPU `COUNTERS` map: read by `sluice inspect` and Prometheus, and written by
//! userspace for the reasons only userspace sees (a rejected configuration, a connection that
//! reached the proxy without an original destination, a loop).

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, MapError, PerCpuArray, PerCpuValues};
use sluice_common::{counters::Counter, map_names};

use super::maps;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Open(#[from] maps::Error),
    #[error("reading COUNTERS[{index}]")]
    Read {
        index: u32,
        #[source]
        source: MapError,
    },
    #[error("writing COUNTERS[{index}]")]
    Write {
        index: u32,
        #[source]
        source: MapError,
    },
}

/// One counter, per CPU and summed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Reading {
    pub counter: &'static str,
    pub total: u64,
    pub per_cpu: Vec<u64>,
}

/// A handle on `COUNTERS`. Clones share one lock, so userspace increments from one process
/// never lose updates to each other (they are rare: a syscall pair each).
#[derive(Clone)]
pub struct Counters {
    map: Arc<Mutex<PerCpuArray<MapData, u64>>>,
}

// === impl Counters ===

impl Counters {
    pub fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Self {
            map: Arc::new(Mutex::new(map)),
        }
    }

    pub fn open(pin_dir: &Path) -> Result<Self, Error> {
        Ok(Self::new(maps::open_as(
            pin_dir,
            map_names::COUNTERS,
            "per-CPU array",
        )?))
    }

    /// Every known counter, in index order.
    pub fn read(&self) -> Result<Vec<Reading>, Error> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        Counter::ALL
            .iter()
            .map(|&c| {
                let index = c as u32;
                let values = map
                    .get(&index, 0)
                    .map_err(|source| Error::Read { index, source })?;
                let per_cpu: Vec<u64> = values.iter().copied().collect();
                Ok(Reading {
                    counter: c.label(),
                    total: per_cpu.iter().sum(),
                    per_cpu,
                })
            })
            .collect()
    }

    /// The sum over CPUs of one counter.
    pub fn total(&self, counter: Counter) -> Result<u64, Error> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let index = counter as u32;
        let values = map
            .get(&index, 0)
            .map_err(|source| Error::Read { index, source })?;
        Ok(values.iter().sum())
    }

    /// Adds one to `counter` (in CPU 0's slot; only the sum is meaningful to readers).
    pub fn bump(&self, counter: Counter) -> Result<(), Error> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let index = counter as u32;
        let values = map
            .get(&index, 0)
            .map_err(|source| Error::Read { index, source })?;
        let mut next: Vec<u64> = values.iter().copied().collect();
        if let Some(first) = next.first_mut() {
            *first = first.wrapping_add(1);
        }
        let next = PerCpuValues::try_from(next).map_err(|e| Error::Write {
            index,
            source: MapError::IoError(e),
        })?;
        map.set(index, next, 0)
            .map_err(|source| Error::Write { index, source })
    }
}
