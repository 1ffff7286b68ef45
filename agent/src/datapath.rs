//! The eBPF half: load the embedded object, configure its maps, attach its programs.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, MapError, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError},
};
use sluice_common::{
    config::DatapathConfig,
    intercept::{Intercept4, InterceptRule as RuleValue},
    map_names, program_names,
};
use tracing::debug;

use crate::config::Config;

pub mod cgroup;
pub mod intercept;

/// The object built by `build.rs` from `ebpf/programs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no program `{name}`")]
    MissingProgram { name: &'static str },
    #[error("the eBPF object has no map `{name}`")]
    MissingMap { name: &'static str },
    #[error("program `{name}`")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    #[error("opening cgroup {path}")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The loaded programs and maps. Dropping it detaches the programs.
pub struct Datapath {
    // Owns the programs, maps and links; dropping it detaches and unloads.
    _ebpf: Ebpf,
    cgroup: PathBuf,
}

// === impl Datapath ===

impl Datapath {
    /// Loads the object, writes the configuration and rules, then attaches `connect4` to the
    /// configured cgroup: the maps are complete before the first connect() can see them.
    pub fn start(config: &Config) -> Result<Self, Error> {
        let cgroup = cgroup::resolve(&config.cgroup)?;
        // Kernel BTF lets the loader relocate; without it the object still loads (no CO-RE use).
        let btf = Btf::from_sys_fs().ok();
        let mut ebpf = EbpfLoader::new()
            .btf(btf.as_ref())
            .load(OBJECT)
            .map_err(|e| Error::Load(Box::new(e)))?;

        write_rules(&mut ebpf, config)?;
        write_config(&mut ebpf, config)?;
        attach_connect4(&mut ebpf, &cgroup)?;
        Ok(Self {
            _ebpf: ebpf,
            cgroup,
        })
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Hands the `INTERCEPT` trie to its owner for live updates (the kube reconciler), once.
    pub fn take_intercept_map(&mut self) -> Result<LpmTrie<MapData, Intercept4, RuleValue>, Error> {
        let name = map_names::INTERCEPT;
        let map = self
            ._ebpf
            .take_map(name)
            .ok_or(Error::MissingMap { name })?;
        LpmTrie::try_from(map).map_err(|source| Error::Map { name, source })
    }
}

fn write_config(ebpf: &mut Ebpf, config: &Config) -> Result<(), Error> {
    let name = map_names::CONFIG;
    let map = ebpf.map_mut(name).ok_or(Error::MissingMap { name })?;
    let mut array: Array<_, DatapathConfig> =
        Array::try_from(map).map_err(|source| Error::Map { name, source })?;
    let value = DatapathConfig {
        proxy_ip4: config.proxy_addr.ip().octets(),
        proxy_port: config.proxy_addr.port().to_be_bytes(),
        _pad0: [0; 2],
        agent_mark: config.agent_mark,
        enabled: 1,
    };
    array
        .set(0, value, 0)
        .map_err(|source| Error::Map { name, source })
}

fn write_rules(ebpf: &mut Ebpf, config: &Config) -> Result<(), Error> {
    let name = map_names::INTERCEPT;
    let map = ebpf.map_mut(name).ok_or(Error::MissingMap { name })?;
    let mut trie: LpmTrie<_, Intercept4, RuleValue> =
        LpmTrie::try_from(map).map_err(|source| Error::Map { name, source })?;
    for (policy_id, rule) in config.intercepts.iter().enumerate() {
        let key = Key::new(
            Intercept4::prefix_len(rule.prefix_len),
            Intercept4::new(rule.addr.octets(), rule.port),
        );
        let value = RuleValue {
            policy_id: u32::try_from(policy_id).unwrap_or(u32::MAX),
            flags: 0,
        };
        trie.insert(&key, value, 0)
            .map_err(|source| Error::Map { name, source })?;
        debug!(%rule, "intercept rule installed");
    }
    Ok(())
}

fn attach_connect4(ebpf: &mut Ebpf, cgroup: &Path) -> Result<(), Error> {
    let name = program_names::CONNECT4;
    let program: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or(Error::MissingProgram { name })?
        .try_into()
        .map_err(|source| Error::Program { name, source })?;
    program
        .load()
        .map_err(|source| Error::Program { name, source })?;
    let dir = File::open(cgroup).map_err(|source| Error::OpenCgroup {
        path: cgroup.to_owned(),
        source,
    })?;
    // `Single` is the only mode the kernel accepts for cgroup bpf_links (flags are rejected
    // with EINVAL); links coexist with other programs on the same cgroup regardless.
    program
        .attach(&dir, CgroupAttachMode::Single)
        .map_err(|source| Error::Program { name, source })?;
    Ok(())
}
