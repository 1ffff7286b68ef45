//! The steps of `Datapath::start` that talk to aya: load the object with its maps pinned,
//! verify every program, write the configuration, swap in replaced maps.

use std::{collections::BTreeSet, fs, fs::File};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, MapError, SockHash},
    programs::{Program, SkMsg},
};
use sluice_common::{
    accel::SockKey,
    config::{CFG_ACCEL, CFG_ENABLED, CFG_PROXY4, CFG_PROXY6, DatapathConfig},
    map_names, program_names,
};
use tracing::info;

use super::{Error, Settings, cgroup::Cgroup, links, maps, pin::PinDir};

/// Loads the object. Maps pinned with the right geometry are adopted, missing ones created and
/// pinned; mismatched ones are created unpinned (pinned by [`swap_pins`] later).
pub fn object(object: &[u8], pins: &PinDir, mismatched: &[maps::Mismatch]) -> Result<Ebpf, Error> {
    // Kernel BTF lets the loader relocate; probe::check has made sure it exists.
    let btf = Btf::from_sys_fs().ok();
    let mut loader = EbpfLoader::new();
    loader.btf(btf.as_ref());
    let paths: Vec<_> = maps::PINNED
        .iter()
        .filter(|name| !mismatched.iter().any(|m| m.name == **name))
        .map(|name| (*name, pins.map(name)))
        .collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader.load(object).map_err(|e| Error::Load(Box::new(e)))
}

/// Verifies and loads every program; attaches nothing. A program the kernel refuses fails the
/// start before any link exists.
pub fn programs(ebpf: &mut Ebpf) -> Result<(), Error> {
    for (name, program) in ebpf.programs_mut() {
        let result = match program {
            Program::CgroupSockAddr(p) => p.load(),
            Program::SockOps(p) => p.load(),
            Program::CgroupSockopt(p) => p.load(),
            Program::SkMsg(p) => p.load(),
            other => {
                return Err(Error::Invalid(format!(
                    "unexpected program `{name}` of type {:?} in the object",
                    other.prog_type()
                )));
            }
        };
        result.map_err(|source| Error::Program {
            name: name.to_owned(),
            source,
        })?;
    }
    Ok(())
}

/// The ids of the maps the programs use under the pinned names (adopted or fresh).
pub fn pinned_map_ids(ebpf: &Ebpf) -> Result<BTreeSet<u32>, Error> {
    maps::PINNED
        .iter()
        .map(|&name| {
            let map = ebpf.map(name).ok_or(maps::Error::Missing { name })?;
            let data = map_data(map).ok_or(maps::Error::Missing { name })?;
            let info = data.info().map_err(|source| Error::Map { name, source })?;
            Ok(info.id())
        })
        .collect()
}

fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d) => Some(d),
        _ => None,
    }
}

/// Takes `name` out of the object as the typed map `T`.
pub fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(maps::Error::Missing { name })?;
    T::try_from(map).map_err(|source| Error::Map { name, source })
}

/// Writes `CONFIG`, enabling the datapath. Written last, after the rules and exclusions, so
/// the first connect that sees it sees a complete configuration.
pub fn write_config(
    ebpf: &mut Ebpf,
    settings: &Settings,
    attach_level: u32,
    netns_cookie: u64,
) -> Result<(), Error> {
    let name = map_names::CONFIG;
    let map = ebpf.map_mut(name).ok_or(maps::Error::Missing { name })?;
    let mut array: Array<_, DatapathConfig> =
        Array::try_from(map).map_err(|source| Error::Map { name, source })?;
    let mut value = DatapathConfig {
        agent_mark: settings.agent_mark,
        flags: CFG_ENABLED,
        host_netns_cookie: netns_cookie,
        attach_level,
        ..DatapathConfig::default()
    };
    if let Some(p) = settings.proxy4 {
        value.proxy_ip4 = p.ip().octets();
        value.proxy_port4 = p.port().to_be_bytes();
        value.flags |= CFG_PROXY4;
    }
    if settings.accelerate {
        value.flags |= CFG_ACCEL;
    }
    if let Some(p) = settings.proxy6 {
        value.proxy_ip6 = p.ip().octets();
        value.proxy_port6 = p.port().to_be_bytes();
        value.flags |= CFG_PROXY6;
    }
    array
        .set(0, value, 0)
        .map_err(|source| Error::Map { name, source })
}

pub fn open_cgroup(cgroup: &Cgroup) -> Result<links::Cgroup, Error> {
    let dir = File::open(&cgroup.path).map_err(|source| Error::OpenCgroup {
        path: cgroup.path.clone(),
        source,
    })?;
    Ok(links::Cgroup { dir, id: cgroup.id })
}

/// Where a replacement map waits for its old namesake's programs to be detached. (bpffs
/// reserves dots in names.)
pub fn staged(pins: &PinDir, name: &str) -> std::path::PathBuf {
    pins.map(&format!("{name}_new"))
}

/// Pins the replacements of mismatched maps under their staged names.
pub fn stage_replacements(
    ebpf: &Ebpf,
    pins: &PinDir,
    mismatched: &[maps::Mismatch],
) -> Result<(), Error> {
    for m in mismatched {
        let path = staged(pins, m.name);
        // A start that died before swapping left its replacement: start over.
        let _ = fs::remove_file(&path);
        let map = ebpf
            .map(m.name)
            .ok_or(maps::Error::Missing { name: m.name })?;
        map.pin(&path).map_err(|e| {
            Error::Pin(super::pin::Error::Io {
                action: "pinning",
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
    }
    Ok(())
}

/// Moves the replacement maps over the old pins, now that no attached program uses the old
/// maps any more.
pub fn swap_pins(pins: &PinDir, mismatched: &[maps::Mismatch]) -> Result<(), Error> {
    for m in mismatched {
        let from = staged(pins, m.name);
        let to = pins.map(m.name);
        fs::rename(&from, &to).map_err(|source| {
            Error::Pin(super::pin::Error::Io {
                action: "renaming",
                path: from.clone(),
                source,
            })
        })?;
        info!(map = m.name, "replaced pinned map");
    }
    Ok(())
}

/// Attaches sk_msg to `PEERS`. The attachment lives as long as the map, pinned, so it needs no
/// link of its own; attaching again replaces the program an earlier agent attached.
pub fn attach_accel(ebpf: &mut Ebpf) -> Result<(), Error> {
    let name = map_names::PEERS;
    let map = ebpf.map(name).ok_or(maps::Error::Missing { name })?;
    let peers: SockHash<&MapData, SockKey> =
        SockHash::try_from(map).map_err(|source| Error::Map { name, source })?;
    let fd = peers
        .fd()
        .try_clone()
        .map_err(|source| Error::Invalid(format!("duplicating the {name} descriptor: {source}")))?;
    let program = program_names::SKMSG;
    let prog: &mut SkMsg = ebpf
        .program_mut(program)
        .ok_or_else(|| Error::Invalid(format!("the eBPF object has no program `{program}`")))?
        .try_into()
        .map_err(|source| Error::Program {
            name: program.to_owned(),
            source,
        })?;
    prog.attach(&fd).map_err(|source| Error::Program {
        name: program.to_owned(),
        source,
    })?;
    Ok(())
}
