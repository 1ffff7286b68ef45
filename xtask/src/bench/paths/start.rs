//! Starting a path: its servers (or agent) and where the client sends each workload.

use std::{net::SocketAddr, path::Path};

use anyhow::Result;

use super::{Ctx, Endpoint, FAST_MODEL, Live, PACED_MODEL, PathId};
use crate::bench::{
    peers::{self, Route},
    procs,
    sluice::{self, Variant},
};

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/v1/chat/completions")
}

fn endpoints(fast: SocketAddr, paced: SocketAddr) -> (Endpoint, Result<Endpoint, String>) {
    (
        Endpoint {
            url: url(fast),
            model: FAST_MODEL,
        },
        Ok(Endpoint {
            url: url(paced),
            model: PACED_MODEL,
        }),
    )
}

pub(super) fn start(id: PathId, ctx: &Ctx<'_>) -> Result<Live> {
    let b = ctx.backends;
    let dir = ctx.dirs.bench.join(id.id());
    let logs = &ctx.dirs.logs;
    let routes = || -> Result<[Route; 2]> {
        Ok([
            Route {
                name: "fast",
                listen: procs::free_port("127.0.0.1")?,
                upstream: b.fast_addr,
            },
            Route {
                name: "paced",
                listen: procs::free_port("127.0.0.1")?,
                upstream: b.paced_addr,
            },
        ])
    };
    let available = |a: &peers::Availability| a.clone().map(|_| ()).map_err(anyhow::Error::msg);
    let (procs, proxy, (fast, paced)) = match id {
        PathId::Direct => (Vec::new(), None, endpoints(b.fast_addr, b.paced_addr)),
        PathId::Nginx | PathId::Haproxy => {
            let r = routes()?;
            let proc = if id == PathId::Nginx {
                available(&ctx.peers.nginx)?;
                peers::start_nginx(&dir, logs, &r)?
            } else {
                available(&ctx.peers.haproxy)?;
                peers::start_haproxy(&dir, logs, &r)?
            };
            let pgid = proc.pgid();
            (vec![proc], Some(pgid), endpoints(r[0].listen, r[1].listen))
        }
        PathId::Litellm => {
            let (bin, _) = ctx
                .peers
                .litellm
                .as_ref()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let listen = procs::free_port("127.0.0.1")?;
            let models = [(FAST_MODEL, b.fast_addr), (PACED_MODEL, b.paced_addr)];
            let proc = peers::start_litellm(bin, &dir, logs, listen, &models)?;
            let pgid = proc.pgid();
            (vec![proc], Some(pgid), endpoints(listen, listen))
        }
        PathId::SluiceRedirect
        | PathId::SluiceTransparent
        | PathId::SluiceAccelerated
        | PathId::SluiceFull => {
            return start_sluice(id, ctx, &dir);
        }
    };
    Ok(Live {
        _procs: procs,
        _sluice: None,
        proxy_pgid: proxy,
        fast,
        paced,
        cgroup: None,
        stats: None,
        notes: Vec::new(),
    })
}

fn start_sluice(id: PathId, ctx: &Ctx<'_>, dir: &Path) -> Result<Live> {
    let variant = match id {
        PathId::SluiceRedirect => Variant::Redirect,
        PathId::SluiceFull => Variant::Full,
        PathId::SluiceAccelerated => Variant::Accelerated,
        _ => Variant::Transparent,
    };
    let bin = ctx.sluice.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let b = ctx.backends;
    let started = sluice::start(
        variant,
        bin,
        dir.parent().unwrap_or(dir),
        &ctx.dirs.logs,
        (b.fast_addr, b.paced_addr),
    )?;
    let paced = started
        .paced
        .map(|a| Endpoint {
            url: url(a),
            model: PACED_MODEL,
        })
        .ok_or_else(|| {
            "connect4 has one redirect target on this path (the fast backend)".to_owned()
        });
    Ok(Live {
        proxy_pgid: Some(started.agent.pgid()),
        fast: Endpoint {
            url: url(started.fast),
            model: FAST_MODEL,
        },
        paced,
        cgroup: Some(started.cgroup.path().to_owned()),
        stats: Some(started.stats.clone()),
        notes: started.notes.clone(),
        _procs: Vec::new(),
        _sluice: Some(started),
    })
}
