//! Idle connections: open many, complete one request on each (so every proxy in the path has
//! set up its per-connection state, upstream connection included), then hold them open while
//! the caller measures memory.

use std::{net::SocketAddr, time::Duration};

use tokio::task::JoinSet;

use super::{
    client::{self, Failure, Sender},
    request::RequestSpec,
};

/// How many connections are set up at once.
const PARALLEL: usize = 64;

/// Connections that completed a request and are now idle, and the failures.
pub struct Idle {
    pub held: Vec<Sender>,
    pub failures: Vec<Failure>,
}

/// Opens `count` connections to `addr`, each completing one `spec` request within `timeout`.
pub async fn open(addr: SocketAddr, spec: &RequestSpec, count: usize, timeout: Duration) -> Idle {
    let mut idle = Idle {
        held: Vec::with_capacity(count),
        failures: Vec::new(),
    };
    let mut set = JoinSet::new();
    let mut started = 0;
    while started < count || !set.is_empty() {
        while started < count && set.len() < PARALLEL {
            let spec = spec.clone();
            set.spawn(async move {
                let attempt = async {
                    let mut sender = client::connect(addr).await?;
                    client::execute(&mut sender, &spec).await?;
                    Ok(sender)
                };
                tokio::time::timeout(timeout, attempt)
                    .await
                    .unwrap_or(Err(Failure::Timeout))
            });
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(sender))) => idle.held.push(sender),
            Some(Ok(Err(failure))) => idle.failures.push(failure),
            // A panicked task is a bug in the code above; count it as a failure to connect.
            Some(Err(_)) => idle.failures.push(Failure::Timeout),
            None => {}
        }
    }
    idle
}
