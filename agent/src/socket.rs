//! Sockets the agent opens. Every one carries the agent's `SO_MARK`, so the datapath never
//! redirects the agent's own connections back into its proxy (upstreams, health probes,
//! Redis, the API server, egress), and every TCP one has `TCP_NODELAY`: the proxy forwards
//! what it has as soon as it has it.
//!
//! Setting `SO_MARK` needs `CAP_NET_ADMIN`; failing to set it is an error, never ignored,
//! because an unmarked upstream socket is a loop waiting for a matching rule.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd as _},
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How the agent's sockets are marked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marked {
    pub mark: u32,
}

// === impl Marked ===

impl Marked {
    pub const fn new(mark: u32) -> Self {
        Self { mark }
    }

    /// An unconnected TCP socket for `addr`'s family, marked and with `TCP_NODELAY`.
    pub fn tcp_socket(&self, addr: &SocketAddr) -> io::Result<TcpSocket> {
        let sock = self.raw_tcp(addr)?;
        sock.set_nonblocking(true)?;
        Ok(TcpSocket::from_std_stream(sock.into()))
    }

    /// Connects to `addr` with a marked socket.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.tcp_socket(&addr)?.connect(addr).await
    }

    /// A listener on `addr` (marked, so accepted sockets carry the mark too; `SO_REUSEADDR`).
    pub fn listen(&self, addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
        let sock = self.raw_tcp(&addr)?;
        sock.set_reuse_address(true)?;
        sock.set_nonblocking(true)?;
        sock.bind(&SockAddr::from(addr))?;
        sock.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        TcpListener::from_std(sock.into())
    }

    /// A blocking connect with a timeout, for code outside the async runtime.
    pub fn connect_blocking(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<std::net::TcpStream> {
        let sock = self.raw_tcp(&addr)?;
        sock.connect_timeout(&SockAddr::from(addr), timeout)?;
        Ok(sock.into())
    }

    /// Marks a socket that a library created (one that offers a hook for it).
    pub fn apply(&self, sock: impl AsFd) -> io::Result<()> {
        set_mark(sock, self.mark)
    }

    fn raw_tcp(&self, addr: &SocketAddr) -> io::Result<Socket> {
        let sock = Socket::new(
            Domain::for_address(*addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        sock.set_mark(self.mark)?;
        sock.set_tcp_nodelay(true)?;
        Ok(sock)
    }
}

/// The mark a socket carries.
pub fn mark_of(sock: impl AsFd) -> io::Result<u32> {
    let mut mark: u32 = 0;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: `mark` and `len` are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw mut mark).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(mark)
}

/// Sets `SO_MARK` on a socket created elsewhere (needs `CAP_NET_ADMIN`).
pub fn set_mark(sock: impl AsFd, mark: u32) -> io::Result<()> {
    // SAFETY: `mark` is valid for reads of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw const mark).cast(),
            size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[tokio::test]
    async fn connected_sockets_carry_the_mark_and_nodelay() {
        if !is_root() {
            eprintln!("skipping: SO_MARK needs CAP_NET_ADMIN");
            return;
        }
        let marked = Marked::new(0x5c);
        let listener = marked
            .listen("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")), 8)
            .unwrap_or_else(|e| panic!("listen: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let stream = marked
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        assert_eq!(mark_of(&stream).unwrap_or_else(|e| panic!("{e}")), 0x5c);
        assert!(stream.nodelay().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(mark_of(&listener).unwrap_or_else(|e| panic!("{e}")), 0x5c);
        let blocking = marked
            .connect_blocking(addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect: {e}"));
        assert_eq!(mark_of(&blocking).unwrap_or_else(|e| panic!("{e}")), 0x5c);
    }
}
