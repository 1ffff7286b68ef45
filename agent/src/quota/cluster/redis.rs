//! The Redis cluster store: one multiplexed connection over a socket this module opens and
//! marks itself (every socket the agent opens carries its `SO_MARK`, so connect4 never
//! redirects the agent's own traffic), and one Lua script that moves a claim atomically.

use std::{net::SocketAddr, os::fd::AsRawFd as _, time::Duration};

use redis::{
    AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo as _, RedisConnectionInfo, Script,
    aio::MultiplexedConnection,
};
use tokio::{net::TcpSocket, sync::Mutex};

use super::{
    BoxFuture, ClusterConfig, Error, LeaseBackend, LeaseKey, LeaseOp, LeaseReply, StoreError,
};

/// [`super::apply_claim`] in Lua. KEYS[1]: the counter's hash for one window.
/// ARGV: node field, floor, desired, limit, time to live (ms). Returns {before, after, total}.
/// Numbers stay far below 2^53 (limits are at most 2^48), so Lua's doubles are exact.
const CLAIM: &str = r#"
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local total = tonumber(redis.call('HGET', KEYS[1], '_total') or '0')
local floor = tonumber(ARGV[2])
local desired = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
if total < mine then total = mine end
local claim = mine
if claim < floor then
  total = total + (floor - claim)
  claim = floor
end
if desired < floor then desired = floor end
if desired > claim then
  local room = limit - total
  if room > 0 then
    local grant = math.min(desired - claim, room)
    claim = claim + grant
    total = total + grant
  end
elseif desired < claim then
  total = total - (claim - desired)
  claim = desired
end
redis.call('HSET', KEYS[1], ARGV[1], claim, '_total', total)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {mine, claim, total}
"#;

pub struct RedisBackend {
    host: String,
    port: u16,
    info: RedisConnectionInfo,
    mark: Option<u32>,
    timeout: Duration,
    prefix: String,
    script: Script,
    connection: Mutex<Option<MultiplexedConnection>>,
}

// === impl RedisBackend ===

impl RedisBackend {
    pub fn new(config: &ClusterConfig) -> Result<Self, Error> {
        let url = &config.redis_url;
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|source| Error::Url {
                url: url.clone(),
                source,
            })?;
        let ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            return Err(Error::UnsupportedUrl { url: url.clone() });
        };
        Ok(Self {
            host,
            port,
            info: info.redis_settings().clone(),
            mark: config.agent_mark,
            timeout: config.op_timeout,
            prefix: config.key_prefix.clone(),
            script: Script::new(CLAIM),
            connection: Mutex::new(None),
        })
    }

    /// The live connection, connecting first if there is none.
    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut slot = self.connection.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let stream = self.connect().await?;
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(self.timeout));
        let (conn, driver) =
            MultiplexedConnection::new_with_config(&self.info, stream, config).await?;
        tokio::spawn(driver);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn connect(&self) -> Result<tokio::net::TcpStream, StoreError> {
        let target = format!("{}:{}", self.host, self.port);
        let io = |source| StoreError::Connect {
            addr: target.clone(),
            source,
        };
        let addr = tokio::net::lookup_host(&target)
            .await
            .map_err(io)?
            .next()
            .ok_or_else(|| {
                io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no address",
                ))
            })?;
        connect_marked(addr, self.mark).await
    }

    async fn reset(&self) {
        *self.connection.lock().await = None;
    }

    async fn run_claim(
        &self,
        key: &LeaseKey,
        node: &str,
        op: LeaseOp,
    ) -> Result<LeaseReply, StoreError> {
        let mut conn = self.connection().await?;
        let result: Result<Vec<i64>, _> = self
            .script
            .key(key.name(&self.prefix))
            .arg(format!("n:{node}"))
            .arg(op.floor)
            .arg(op.desired)
            .arg(key.limit)
            .arg(key.ttl_ms.max(1))
            .invoke_async(&mut conn)
            .await;
        let values = match result {
            Ok(values) => values,
            Err(error) => {
                self.reset().await;
                return Err(error.into());
            }
        };
        match values.as_slice() {
            &[before, after, total] if before >= 0 && after >= 0 && total >= 0 => Ok(LeaseReply {
                before: before as u64,
                after: after as u64,
                total: total as u64,
            }),
            _ => Err(StoreError::Reply(values)),
        }
    }

    async fn run_probe(&self) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
        if let Err(error) = pong {
            self.reset().await;
            return Err(error.into());
        }
        Ok(())
    }
}

impl LeaseBackend for RedisBackend {
    fn claim<'a>(
        &'a self,
        key: &'a LeaseKey,
        node: &'a str,
        op: LeaseOp,
    ) -> BoxFuture<'a, Result<LeaseReply, StoreError>> {
        Box::pin(self.run_claim(key, node, op))
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.run_probe())
    }
}

/// A TCP connection to `addr` from a socket that carries `mark` (when given) and TCP_NODELAY.
pub async fn connect_marked(
    addr: SocketAddr,
    mark: Option<u32>,
) -> Result<tokio::net::TcpStream, StoreError> {
    let io = |source| StoreError::Connect {
        addr: addr.to_string(),
        source,
    };
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(io)?;
    if let Some(mark) = mark {
        set_mark(&socket, mark).map_err(|source| StoreError::Mark { mark, source })?;
    }
    let stream = socket.connect(addr).await.map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    Ok(stream)
}

fn set_mark(socket: &TcpSocket, mark: u32) -> std::io::Result<()> {
    // SAFETY: a valid socket fd, a pointer to a live u32 and its exact length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw const mark).cast(),
            size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
