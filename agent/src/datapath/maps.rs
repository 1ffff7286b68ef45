//! The pinned maps: which ones there are, what shape each must have, and typed handles opened
//! from the pin directory.
//!
//! aya's loader adopts a pinned map by name without comparing its type, key, value or size
//! with the object's definition, so an upgrade that changed a map would silently run new
//! programs against an old layout. Before loading, every pinned map's geometry is compared
//! with the embedded object's; a map that differs is replaced (see `Datapath::start`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::maps::{Map, MapData, MapError, MapInfo};
use sluice_common::map_names;

/// The maps the agent pins (every map of the object except aya's internal data sections).
pub const PINNED: [&str; 13] = [
    map_names::INTERCEPT,
    map_names::CONFIG,
    map_names::AGENT,
    map_names::EXCLUDE,
    map_names::SOCKETS,
    map_names::ORIG_DST,
    map_names::LOCALITY,
    map_names::QUOTA,
    map_names::QUOTA_TENANTS,
    map_names::PEERS,
    map_names::TCP_PATH,
    map_names::COUNTERS,
    map_names::AYA_LOGS,
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("parsing the embedded eBPF object")]
    Parse(#[source] Box<aya_obj::ParseError>),
    #[error("the eBPF object has no map `{name}`")]
    Missing { name: &'static str },
    #[error("opening pinned map {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("pinned map {path} is not a {expected}")]
    WrongType {
        path: PathBuf,
        expected: &'static str,
    },
}

/// The shape of a map: what must match for a pinned map to be adopted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// A pinned map whose shape differs from the object's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub name: &'static str,
    pub pinned: Geometry,
    pub expected: Geometry,
}

// === impl Geometry ===

impl Geometry {
    fn of_info(info: &MapInfo) -> Self {
        Self {
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        }
    }
}

impl std::fmt::Display for Geometry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {} key {} value {} entries {} flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// The geometry of every pinned map, as the embedded object defines it.
pub fn expected(object: &[u8]) -> Result<BTreeMap<&'static str, Geometry>, Error> {
    let obj = aya_obj::Object::parse(object).map_err(|e| Error::Parse(Box::new(e)))?;
    PINNED
        .iter()
        .map(|&name| {
            let m = obj.maps.get(name).ok_or(Error::Missing { name })?;
            Ok((
                name,
                Geometry {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries: m.max_entries(),
                    flags: m.map_flags(),
                },
            ))
        })
        .collect()
}

/// Compares the maps pinned in `dir` with `expected`. Maps that are not pinned yet are not
/// mismatches (the loader creates and pins them).
pub fn mismatches(
    dir: &Path,
    expected: &BTreeMap<&'static str, Geometry>,
) -> Result<Vec<Mismatch>, Error> {
    let mut out = Vec::new();
    for (&name, &want) in expected {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| Error::Open { path, source })?;
        let pinned = Geometry::of_info(&info);
        if !same(name, pinned, want) {
            out.push(Mismatch {
                name,
                pinned,
                expected: want,
            });
        }
    }
    Ok(out)
}

/// The kernel reports a ring buffer's size rounded as it allocated it and may set flags the
/// object did not ask for; everything else must be equal.
fn same(name: &str, pinned: Geometry, want: Geometry) -> bool {
    if name == map_names::AYA_LOGS {
        return pinned.map_type == want.map_type && pinned.max_entries >= want.max_entries;
    }
    pinned == want
}

/// Opens the map pinned as `dir/name`.
pub fn open(dir: &Path, name: &str) -> Result<Map, Error> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| Error::Open {
        path: path.clone(),
        source,
    })?;
    Map::from_map_data(data).map_err(|source| Error::Open { path, source })
}

/// Opens `dir/name` as the typed map `T`.
pub fn open_as<T>(dir: &Path, name: &str, expected: &'static str) -> Result<T, Error>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = open(dir, name)?;
    T::try_from(map).map_err(|_| Error::WrongType {
        path: dir.join(name),
        expected,
    })
}
