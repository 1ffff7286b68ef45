//! Socket options every agent socket carries.
//!
//! A minimal SO_MARK setter for the proxy's own sockets; the datapath's `socket.rs` has (or
//! will have) the same, and the two are to be unified.

use std::{io, os::fd::AsFd};

/// Sets `SO_MARK`, so connect4 never redirects the proxy's own upstream connections (no loops).
/// Needs CAP_NET_ADMIN.
pub fn set_mark(socket: &impl AsFd, mark: u32) -> io::Result<()> {
    setsockopt_u32(socket, libc::SOL_SOCKET, libc::SO_MARK, mark)
}

/// Reads `SO_MARK` back (tests, and a start-up check that the capability is there).
pub fn mark(socket: &impl AsFd) -> io::Result<u32> {
    use std::os::fd::AsRawFd as _;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is valid for the borrow; value and len are valid for writes of their size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value as u32)
}

fn setsockopt_u32(socket: &impl AsFd, level: i32, name: i32, value: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let value = value as libc::c_int;
    // SAFETY: the fd is valid for the borrow; the option value is a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
