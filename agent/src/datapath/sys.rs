//! The few system calls aya 0.14 does not expose: a cgroup link's target, forced link detach,
//! the programs attached to a map, a socket's network-namespace cookie, and filesystem magic.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_PROG_QUERY: libc::c_long = 16;
/// `enum bpf_attach_type`: an sk_msg program on a sockmap or sockhash.
pub const BPF_SK_MSG_VERDICT: u32 = 7;

/// `BPF_FS_MAGIC` from linux/magic.h.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `SO_NETNS_COOKIE` from asm-generic/socket.h (Linux 5.14).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// What the kernel says about a cgroup bpf_link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLinkInfo {
    pub link_id: u32,
    pub prog_id: u32,
    pub cgroup_id: u64,
    pub attach_type: u32,
}

/// `struct bpf_link_info` up to the cgroup member of its union (offset 16, 8-aligned), with
/// room for the larger union members the kernel may fill.
#[repr(C, align(8))]
#[derive(Default)]
struct RawLinkInfo {
    type_: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    cgroup_id: u64,
    attach_type: u32,
    _rest: [u32; 11],
}

#[repr(C, align(8))]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `BPF_OBJ_GET` and `BPF_OBJ_PIN` share one attribute layout.
#[repr(C, align(8))]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Runs `cmd` (`BPF_OBJ_GET` or `BPF_OBJ_PIN`) on `path`; `bpf_fd` is 0 for a get.
fn obj_cmd(cmd: libc::c_long, path: &Path, bpf_fd: u32) -> io::Result<libc::c_long> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd,
        file_flags: 0,
    };
    bpf(cmd, (&raw mut attr).cast(), size_of::<ObjAttr>())
}

/// Opens a pinned bpf object (map, program or link).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let fd = obj_cmd(BPF_OBJ_GET, path, 0)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Pins a bpf object at `path` (on a bpffs).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    obj_cmd(BPF_OBJ_PIN, path, raw(fd)?).map(drop)
}

/// Attaches `prog` to the cgroup `target` with a bpf_link (Linux 5.7). aya 0.14 cannot turn
/// every cgroup program's link into a pinnable `FdLink` (`CgroupSockopt` lacks the
/// conversion), so the datapath creates and pins its links itself, uniformly.
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    #[repr(C, align(8))]
    struct Attr {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
    }
    let mut attr = Attr {
        prog_fd: raw(prog)?,
        target_fd: raw(target)?,
        attach_type,
        // The kernel rejects every flag for cgroup links.
        flags: 0,
    };
    let fd = bpf(BPF_LINK_CREATE, (&raw mut attr).cast(), size_of::<Attr>())?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: BPF_LINK_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The program, cgroup and attach type of a cgroup link.
pub fn cgroup_link_info(link: BorrowedFd<'_>) -> io::Result<CgroupLinkInfo> {
    let mut info = RawLinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: raw(link)?,
        info_len: size_of::<RawLinkInfo>() as u32,
        info: (&raw mut info) as u64,
    };
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        (&raw mut attr).cast(),
        size_of::<InfoAttr>(),
    )?;
    Ok(CgroupLinkInfo {
        link_id: info.id,
        prog_id: info.prog_id,
        cgroup_id: info.cgroup_id,
        attach_type: info.attach_type,
    })
}

/// The ids of the programs attached to `target` (a sockmap or sockhash: Linux 5.19; a cgroup)
/// as `attach_type`.
pub fn prog_query(target: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    #[repr(C, align(8))]
    struct QueryAttr {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
    }
    // A map takes one program per attach type; a cgroup, a few at most.
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_fd: raw(target)?,
        attach_type,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        _pad: 0,
    };
    bpf(
        BPF_PROG_QUERY,
        (&raw mut attr).cast(),
        size_of::<QueryAttr>(),
    )?;
    Ok(ids[..(attr.prog_cnt as usize).min(ids.len())].to_vec())
}

/// Detaches a link from its target now, whoever else holds it open (Linux 5.9).
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    // The kernel rejects any non-zero byte past the fields it knows, padding included, so
    // the padding is an explicit zero field.
    #[repr(C, align(8))]
    struct Attr {
        link_fd: u32,
        _pad: u32,
    }
    let mut attr = Attr {
        link_fd: raw(link)?,
        _pad: 0,
    };
    bpf(BPF_LINK_DETACH, (&raw mut attr).cast(), size_of::<Attr>()).map(drop)
}

/// The cookie of the network namespace `sock` lives in, as `bpf_get_netns_cookie()` reports it.
pub fn netns_cookie(sock: impl AsFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cookie of the caller's own network namespace (from an unbound, unconnected socket).
pub fn own_netns_cookie() -> io::Result<u64> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    netns_cookie(&sock)
}

/// The filesystem magic of the filesystem `path` is on.
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs is plain data; zeroed is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` is valid for writes.
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // `f_type` is `i64` on x86_64 and narrower elsewhere.
    Ok(st.f_type as i64)
}

fn raw(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("negative file descriptor"))
}

fn bpf(cmd: libc::c_long, attr: *mut libc::c_void, size: usize) -> io::Result<libc::c_long> {
    // SAFETY: `attr` points at a live, correctly laid out attribute of `size` bytes.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}
