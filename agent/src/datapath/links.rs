//! The datapath's cgroup links: created, pinned, adopted after a restart, replaced on an
//! upgrade, removed on uninstall.
//!
//! Links are pinned so the datapath survives agent restarts (the heartbeat makes that safe;
//! see `heartbeat.rs`). A restarted agent adopts a pinned link when it runs the same program
//! (kernel tag and name) against the same maps on the same cgroup: no second set, no gap. When
//! anything differs (an upgrade, another cgroup), the new link is attached first and the old one
//! detached after, so there is never a moment with no program attached; for that moment both
//! run, which is harmless because connect4/6 are idempotent (a rewritten destination is the
//! proxy, which no rule may match).

use std::{
    collections::BTreeSet,
    fs, io,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::MapInfo,
    programs::{Program, ProgramError, ProgramInfo, loaded_programs},
};
use aya_obj::generated::bpf_attach_type;
use sluice_common::program_names;
use tracing::{info, warn};

use super::{maps, pin::PinDir, sys};

/// Pins of links start with this prefix; anything else in the directory is a map.
const PREFIX: &str = "link_";
/// Suffix of a link attached during an upgrade, before it replaces the old pin. (bpffs
/// reserves dots in names.)
const STAGED: &str = "_new";

/// Which cgroup a link attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The intercepted subtree (the pods' cgroup root).
    Clients,
    /// Where the proxy's accepted sockets live (for `SO_ORIGINAL_DST`).
    Proxy,
}

/// One program attachment.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub pin: &'static str,
    pub program: &'static str,
    pub attach_type: bpf_attach_type,
    pub target: Target,
    /// Attached only with local-socket acceleration on.
    pub accel_only: bool,
}

pub const SPECS: [Spec; 5] = [
    Spec {
        pin: "link_connect4",
        program: program_names::CONNECT4,
        attach_type: bpf_attach_type::BPF_CGROUP_INET4_CONNECT,
        target: Target::Clients,
        accel_only: false,
    },
    Spec {
        pin: "link_connect6",
        program: program_names::CONNECT6,
        attach_type: bpf_attach_type::BPF_CGROUP_INET6_CONNECT,
        target: Target::Clients,
        accel_only: false,
    },
    Spec {
        pin: "link_sockops",
        program: program_names::SOCKOPS,
        attach_type: bpf_attach_type::BPF_CGROUP_SOCK_OPS,
        target: Target::Clients,
        accel_only: false,
    },
    // The proxy's own sockets: its accepted ends and its upstream connections are filed for
    // local-socket acceleration. Where the two cgroups overlap, both attachments run for a
    // socket; the program tells the second run from a first (see sockops.rs).
    Spec {
        pin: "link_sockops_proxy",
        program: program_names::SOCKOPS,
        attach_type: bpf_attach_type::BPF_CGROUP_SOCK_OPS,
        target: Target::Proxy,
        accel_only: true,
    },
    Spec {
        pin: "link_getsockopt",
        program: program_names::GETSOCKOPT,
        attach_type: bpf_attach_type::BPF_CGROUP_GETSOCKOPT,
        target: Target::Proxy,
        accel_only: false,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the eBPF object has no program `{name}`")]
    MissingProgram { name: &'static str },
    #[error("program `{name}`")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("{action} link {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An open cgroup directory and its id.
pub struct Cgroup {
    pub dir: fs::File,
    pub id: u64,
}

/// The cgroups links attach to.
pub struct Targets {
    pub clients: Cgroup,
    pub proxy: Cgroup,
}

/// A link the datapath holds after start.
#[derive(Debug)]
pub struct Attached {
    pub pin: &'static str,
    pub link_id: u32,
    pub prog_id: u32,
    pub adopted: bool,
    _fd: OwnedFd,
}

/// A pinned link found at start.
struct Existing {
    path: PathBuf,
    fd: OwnedFd,
    info: sys::CgroupLinkInfo,
}

// === impl Targets ===

impl Targets {
    fn get(&self, t: Target) -> &Cgroup {
        match t {
            Target::Clients => &self.clients,
            Target::Proxy => &self.proxy,
        }
    }
}

/// Adopts or attaches every link in [`SPECS`] (those for acceleration only when `accelerate`).
/// The programs must be loaded; `map_ids` are the ids of the maps they use (a pinned link whose
/// program uses other maps is replaced).
pub fn attach_all(
    ebpf: &Ebpf,
    pins: &PinDir,
    targets: &Targets,
    map_ids: &BTreeSet<u32>,
    accelerate: bool,
) -> Result<Vec<Attached>, Error> {
    let specs: Vec<Spec> = SPECS
        .into_iter()
        .filter(|s| accelerate || !s.accel_only)
        .collect();
    // A start that died between attaching and renaming left staged links running: remove them.
    for path in pinned(pins.path(), |n| n.ends_with(STAGED))? {
        detach_pin(&path)?;
    }
    let mut attached = Vec::with_capacity(specs.len());
    let mut superseded = Vec::new();
    for &spec in &specs {
        let program = program(ebpf, spec.program)?;
        let target = targets.get(spec.target);
        let path = pins.map(spec.pin);
        match open_existing(&path)? {
            Some(old) if adoptable(&old, spec, target, program, map_ids) => {
                attached.push(Attached {
                    pin: spec.pin,
                    link_id: old.info.link_id,
                    prog_id: old.info.prog_id,
                    adopted: true,
                    _fd: old.fd,
                });
            }
            existing => {
                attached.push(attach_new(spec, program, target, pins)?);
                superseded.extend(existing);
            }
        }
    }
    // Every new link is attached: now the old ones can go, and the new pins take their names.
    for old in superseded {
        detach(&old.path, old.fd.as_fd())?;
    }
    for link in attached.iter().filter(|l| !l.adopted) {
        let staged = pins.map(&format!("{}{STAGED}", link.pin));
        let final_path = pins.map(link.pin);
        fs::rename(&staged, &final_path).map_err(|source| Error::Io {
            action: "renaming",
            path: staged,
            source,
        })?;
    }
    // Links an older version (or this one with other settings) pinned under names this one
    // does not use.
    let known: BTreeSet<&str> = specs.iter().map(|s| s.pin).collect();
    for path in pinned(pins.path(), |n| !known.contains(n))? {
        detach_pin(&path)?;
    }
    Ok(attached)
}

/// Detaches and unpins every link in `pins`; returns how many.
pub fn remove_all(pins: &PinDir) -> Result<usize, super::pin::Error> {
    let paths = pinned(pins.path(), |_| true).map_err(|e| match e {
        Error::Io {
            action,
            path,
            source,
        } => super::pin::Error::Io {
            action,
            path,
            source,
        },
        other => super::pin::Error::Io {
            action: "listing",
            path: pins.path().to_owned(),
            source: io::Error::other(other.to_string()),
        },
    })?;
    let n = paths.len();
    for path in paths {
        detach_pin(&path).map_err(|e| super::pin::Error::Io {
            action: "detaching",
            path: path.clone(),
            source: io::Error::other(e.to_string()),
        })?;
    }
    Ok(n)
}

fn program<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Program, Error> {
    ebpf.program(name).ok_or(Error::MissingProgram { name })
}

fn adoptable(
    old: &Existing,
    spec: Spec,
    target: &Cgroup,
    program: &Program,
    map_ids: &BTreeSet<u32>,
) -> bool {
    if old.info.cgroup_id != target.id || old.info.attach_type != spec.attach_type as u32 {
        return false;
    }
    let (Ok(new), Some(old_prog)) = (program.info(), program_info(old.info.prog_id)) else {
        return false;
    };
    // The old program must use the maps this agent uses (pinned or replaced), not an older
    // generation of them. Its private data sections (.rodata) are not compared.
    let same_maps = old_prog.map_ids().ok().flatten().is_some_and(|ids| {
        ids.iter()
            .filter_map(|&id| MapInfo::from_id(id).ok())
            .filter(|m| m.name_as_str().is_some_and(|n| maps::PINNED.contains(&n)))
            .all(|m| map_ids.contains(&m.id()))
    });
    new.tag() == old_prog.tag() && new.name() == old_prog.name() && same_maps
}

fn program_info(id: u32) -> Option<ProgramInfo> {
    loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
}

fn attach_new(
    spec: Spec,
    program: &Program,
    target: &Cgroup,
    pins: &PinDir,
) -> Result<Attached, Error> {
    let prog_fd = program.fd().map_err(|source| Error::Program {
        name: spec.program,
        source,
    })?;
    let staged = pins.map(&format!("{}{STAGED}", spec.pin));
    let io_err = |action, source| Error::Io {
        action,
        path: staged.clone(),
        source,
    };
    let fd = sys::link_create(prog_fd.as_fd(), target.dir.as_fd(), spec.attach_type as u32)
        .map_err(|e| io_err("creating", e))?;
    sys::obj_pin(fd.as_fd(), &staged).map_err(|e| io_err("pinning", e))?;
    let info = sys::cgroup_link_info(fd.as_fd()).map_err(|e| io_err("inspecting", e))?;
    info!(
        link = spec.pin,
        link_id = info.link_id,
        prog_id = info.prog_id,
        cgroup_id = target.id,
        "attached"
    );
    Ok(Attached {
        pin: spec.pin,
        link_id: info.link_id,
        prog_id: info.prog_id,
        adopted: false,
        _fd: fd,
    })
}

fn open_existing(path: &Path) -> Result<Option<Existing>, Error> {
    let fd = match sys::obj_get(path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                action: "opening",
                path: path.to_owned(),
                source,
            });
        }
    };
    match sys::cgroup_link_info(fd.as_fd()) {
        Ok(info) => Ok(Some(Existing {
            path: path.to_owned(),
            fd,
            info,
        })),
        Err(source) => Err(Error::Io {
            action: "inspecting",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Detaches the link now (whoever else holds it open: an old agent still draining) and
/// removes its pin.
fn detach(path: &Path, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), Error> {
    if let Err(e) = sys::link_detach(fd) {
        // Already detached (its cgroup was removed): removing the pin is all that is left.
        warn!(path = %path.display(), error = %e, "link detach failed");
    }
    fs::remove_file(path).map_err(|source| Error::Io {
        action: "unpinning",
        path: path.to_owned(),
        source,
    })?;
    info!(path = %path.display(), "detached");
    Ok(())
}

fn detach_pin(path: &Path) -> Result<(), Error> {
    match open_existing(path)? {
        Some(old) => detach(path, old.fd.as_fd()),
        None => Ok(()),
    }
}

/// Link pins in `dir` whose names satisfy `keep`.
fn pinned(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, Error> {
    let entries = fs::read_dir(dir).map_err(|source| Error::Io {
        action: "listing",
        path: dir.to_owned(),
        source,
    })?;
    Ok(entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (name.starts_with(PREFIX) && keep(&name)).then(|| e.path())
        })
        .collect())
}
