//! Admission: reserve on every applicable counter atomically, or refuse with OpenAI's 429.

use std::{
    sync::{Arc, MutexGuard},
    time::Duration,
};

use sluice_common::quota::Dimension;

use super::{
    Inner, Table,
    cluster::PlannedOp,
    counter::Counter,
    headers::{self, Tightest, View},
    instance::{Instance, InstanceState},
    settle::{Reserved, Settlement},
    tenant::Tenant,
};
use crate::admission::{AdmissionRequest, Api, Rejected, Ticket};

/// Why a request was refused: the counter that decides `Retry-After` (the one that resets
/// last), and whether any refusing counter depends on the prompt's size.
struct Refusal {
    message: String,
    retry_after_ms: u64,
    input_dependent: bool,
    /// A cluster counter whose lease ran dry while the cluster still has tokens: worth
    /// waiting for the lease (index into the request's instances, counter index, and the
    /// lease's reply count when it refused).
    lease: Option<(usize, usize, u64)>,
    tightest: Tightest,
}

enum Outcome {
    Admitted(Vec<Vec<Reserved>>, Tightest),
    Refused(Box<Refusal>),
    /// An instance was retired (a reload, or the idle sweep) after it was looked up: look the
    /// instances up again.
    Stale,
}

/// What a request asks of each budget.
struct Ask<'a> {
    request: &'a AdmissionRequest<'a>,
    tenant: &'a Tenant<'a>,
    /// The table the request's instances were looked up in.
    table: Arc<Table>,
    input: u64,
}

/// Lookups after which a request that keeps meeting retired instances gives up (reloads
/// racing with it every time): it is then refused, never admitted unmetered.
const MAX_STALE: usize = 8;

pub(super) fn admit(
    inner: &Arc<Inner>,
    request: &AdmissionRequest<'_>,
) -> Result<Ticket, Rejected> {
    let mut now = inner.clock.now_ms();
    let table = inner.table.load_full();
    // The tenant is derived once, with the key of the table the request started under.
    let first = Arc::clone(&table);
    let key = request.tenant_key.unwrap_or(&first.tenant);
    let tenant = Tenant::derive(key, request.identity, request.api_key);
    let mut instances = inner.instances(&table, &tenant, request.model, now);
    if instances.is_empty() {
        return Ok(Ticket::unmetered());
    }
    let handles = inner
        .metrics
        .handles((&tenant.name, tenant.id), request.model);
    let mut ask = Ask {
        request,
        tenant: &tenant,
        table,
        input: request.prompt.upper_bound(),
    };
    let mut stale = 0;
    let mut counted = false;
    // A dry lease is waited for, off the common path, until this deadline: a request may
    // have to wait for an op already in flight (a prefetch, say) and then for its own.
    let mut lease_deadline: Option<std::time::Instant> = None;
    loop {
        match reserve(inner, &instances, &ask, now) {
            Outcome::Stale if stale < MAX_STALE => {
                stale += 1;
                inner.wait_reload();
                ask.table = inner.table.load_full();
                instances = inner.instances(&ask.table, &tenant, request.model, now);
                // A request keeps the table it started with for its reservations; a reload
                // between two lookups only changes which instances it meets.
                if instances.is_empty() {
                    return Ok(Ticket::unmetered());
                }
                continue;
            }
            Outcome::Stale => {
                handles.rejected.inc();
                return Err(Rejected {
                    message: "The token budgets are being reconfigured; please try again."
                        .to_owned(),
                    retry_after: Duration::from_secs(1),
                    headers: Vec::new(),
                });
            }
            Outcome::Admitted(reserved, tightest) => {
                handles.admitted.inc();
                let settlement = Settlement::new(Arc::clone(inner), instances, reserved, handles);
                return Ok(Ticket::new(Box::new(settlement), tightest.headers()));
            }
            Outcome::Refused(refusal) => {
                if refusal.input_dependent && !counted {
                    // The bound decided; the exact count may not.
                    counted = true;
                    let exact = request.prompt.exact();
                    if exact < ask.input {
                        ask.input = exact;
                        continue;
                    }
                }
                if let Some((i, c, seen)) = refusal.lease {
                    let deadline = *lease_deadline.get_or_insert_with(|| {
                        std::time::Instant::now()
                            + inner
                                .cluster
                                .as_ref()
                                .map_or(Duration::ZERO, |l| l.lease_wait())
                    });
                    if std::time::Instant::now() < deadline
                        && wait_for_lease(&instances[i], c, seen, deadline)
                    {
                        now = inner.clock.now_ms();
                        continue;
                    }
                }
                handles.rejected.inc();
                handles
                    .rejected_tokens
                    .inc_by(ask.input + max_output(request, default_max_tokens(&ask.table)));
                return Err(Rejected {
                    message: refusal.message,
                    retry_after: Duration::from_millis(refusal.retry_after_ms),
                    headers: refusal.tightest.headers(),
                });
            }
        }
    }
}

/// Locks every instance (budget order), checks every counter, then reserves on all or none.
fn reserve(inner: &Inner, instances: &[Arc<Instance>], ask: &Ask<'_>, now: u64) -> Outcome {
    let degraded = inner.degraded();
    let mut guards: Vec<_> = instances.iter().map(|i| i.lock()).collect();
    if guards.iter().any(|g| g.retired) {
        return Outcome::Stale;
    }
    let mut ops = Vec::new();
    let outcome = match check(instances, &mut guards, ask, now, degraded) {
        Err(refusal) => {
            if let Some((i, c, _)) = refusal.lease {
                let output = output_for(ask, &instances[i]);
                ops.extend(ask_for_lease(
                    inner,
                    &instances[i],
                    &mut guards[i].counters[c],
                    c,
                    ask.input,
                    output,
                    now,
                ));
            }
            Outcome::Refused(refusal)
        }
        Ok(()) => {
            let (reserved, tightest) =
                commit(inner, instances, &mut guards, ask, now, degraded, &mut ops);
            Outcome::Admitted(reserved, tightest)
        }
    };
    drop(guards);
    send(inner, ops);
    outcome
}

type Guards<'a> = [MutexGuard<'a, InstanceState>];

/// Rolls every counter to now and checks that the request fits on all of them.
fn check(
    instances: &[Arc<Instance>],
    guards: &mut Guards<'_>,
    ask: &Ask<'_>,
    now: u64,
    degraded: bool,
) -> Result<(), Box<Refusal>> {
    let mut refusal: Option<Refusal> = None;
    let mut tightest = Tightest::default();
    for (i, (instance, guard)) in instances.iter().zip(guards.iter_mut()).enumerate() {
        let output = output_for(ask, instance);
        for (c, counter) in guard.counters.iter_mut().enumerate() {
            counter.roll(now);
            let r = reservation(counter.dim, ask.input, output);
            tightest.add(
                counter.dim == Dimension::Requests,
                view(counter, now, degraded),
            );
            if !counter.fits(r, degraded) {
                refuse(
                    &mut refusal,
                    instance,
                    counter,
                    (i, c),
                    r,
                    ask,
                    now,
                    degraded,
                );
            }
        }
    }
    match refusal {
        None => Ok(()),
        Some(mut refusal) => {
            refusal.tightest = tightest;
            Err(Box::new(refusal))
        }
    }
}

/// Reserves on every counter (all fit: [`check`] said so under the same locks).
fn commit(
    inner: &Inner,
    instances: &[Arc<Instance>],
    guards: &mut Guards<'_>,
    ask: &Ask<'_>,
    now: u64,
    degraded: bool,
    ops: &mut Vec<PlannedOp>,
) -> (Vec<Vec<Reserved>>, Tightest) {
    let mut reserved = Vec::with_capacity(instances.len());
    let mut tightest = Tightest::default();
    for (instance, guard) in instances.iter().zip(guards.iter_mut()) {
        let output = output_for(ask, instance);
        let mut parts = Vec::with_capacity(guard.counters.len());
        for (c, counter) in guard.counters.iter_mut().enumerate() {
            let r = reservation(counter.dim, ask.input, output);
            counter.reserve(r);
            parts.push(Reserved::new(c, r, counter.index()));
            tightest.add(
                counter.dim == Dimension::Requests,
                view(counter, now, degraded),
            );
            if let Some(link) = &inner.cluster {
                ops.extend(link.plan(instance, c, counter, now));
            }
        }
        instance.mark_dirty();
        reserved.push(parts);
    }
    (reserved, tightest)
}

/// A cluster counter whose lease ran dry: remember the shortfall so the next lease covers it.
fn ask_for_lease(
    inner: &Inner,
    instance: &Arc<Instance>,
    counter: &mut Counter,
    index: usize,
    input: u64,
    output: u64,
    now: u64,
) -> Option<PlannedOp> {
    let link = inner.cluster.as_ref()?;
    let r = reservation(counter.dim, input, output);
    let lease = counter.lease.as_mut()?;
    lease.shortfall = lease.shortfall.max(r);
    link.plan(instance, index, counter, now)
}

pub(super) fn send(inner: &Inner, ops: Vec<PlannedOp>) {
    if let (Some(link), false) = (&inner.cluster, ops.is_empty()) {
        link.send(ops);
    }
}

/// Waits (bounded by `deadline`) for news on a cluster counter's lease: true when a reply
/// arrived since the refusal (`seen` replies then), false when nothing is in flight either.
fn wait_for_lease(
    instance: &Arc<Instance>,
    counter: usize,
    seen: u64,
    deadline: std::time::Instant,
) -> bool {
    let timeout = deadline.saturating_duration_since(std::time::Instant::now());
    let replies = |s: &InstanceState| {
        s.counters[counter]
            .lease
            .as_ref()
            .map_or(seen, |l| l.replies())
    };
    let guard = instance.lock();
    if replies(&guard) != seen {
        return true;
    }
    if !guard.counters[counter]
        .lease
        .as_ref()
        .is_some_and(|l| l.in_flight())
    {
        return false;
    }
    let guard = instance.wait_lease(guard, timeout, |s| replies(s) == seen);
    replies(&guard) != seen
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn refuse(
    slot: &mut Option<Refusal>,
    instance: &Instance,
    counter: &Counter,
    at: (usize, usize),
    r: u64,
    ask: &Ask<'_>,
    now: u64,
    degraded: bool,
) {
    let reset_ms = counter.window_end_ms() - now;
    let lease_dry = !degraded
        && r <= counter.limit
        && counter
            .lease
            .as_ref()
            .is_some_and(|l| l.cluster_could_cover(counter.limit, counter.charged(), r));
    // A dry lease refills in a round trip, not at the window's end.
    let retry_after_ms = if lease_dry { 1000 } else { reset_ms };
    let input_dependent = matches!(counter.dim, Dimension::InputTokens | Dimension::TotalTokens);
    let this = Refusal {
        message: message(instance, counter, r, ask, reset_ms),
        retry_after_ms,
        input_dependent,
        lease: lease_dry.then(|| {
            let replies = counter.lease.as_ref().map_or(0, |l| l.replies());
            (at.0, at.1, replies)
        }),
        tightest: Tightest::default(),
    };
    match slot {
        None => *slot = Some(this),
        Some(worst) => {
            worst.input_dependent |= this.input_dependent;
            worst.lease = worst.lease.or(this.lease);
            if this.retry_after_ms > worst.retry_after_ms {
                worst.retry_after_ms = this.retry_after_ms;
                worst.message = this.message;
            }
        }
    }
}

fn message(instance: &Instance, counter: &Counter, r: u64, ask: &Ask<'_>, reset_ms: u64) -> String {
    let what = match counter.dim {
        Dimension::InputTokens => "input tokens",
        Dimension::OutputTokens => "output tokens",
        Dimension::TotalTokens => "tokens",
        Dimension::Requests => "requests",
    };
    let head = if r > counter.limit {
        "Request too large"
    } else {
        "Rate limit reached"
    };
    let tail = if r > counter.limit {
        "Reduce the prompt or the output cap (max_tokens).".to_owned()
    } else {
        format!(
            "Please try again in {}.",
            headers::duration(Duration::from_millis(reset_ms))
        )
    };
    format!(
        "{head} for {model} by tenant {tenant} on {what} per {window} (budget {budget}): \
         Limit {limit}, Used {used}, Requested {r}. {tail}",
        model = ask.request.model,
        tenant = ask.tenant.name,
        window = counter.window,
        budget = instance.display,
        limit = counter.limit,
        used = counter.charged(),
    )
}

fn view(counter: &Counter, now: u64, degraded: bool) -> View {
    View {
        limit: counter.limit,
        remaining: counter.remaining(degraded),
        reset_ms: counter.window_end_ms() - now,
    }
}

/// The reservation of one counter: the prompt for input, the output cap for output, both for
/// total, one for requests.
pub(super) fn reservation(dim: Dimension, input: u64, output: u64) -> u64 {
    match dim {
        Dimension::InputTokens => input,
        Dimension::OutputTokens => output,
        Dimension::TotalTokens => input.saturating_add(output),
        Dimension::Requests => 1,
    }
}

fn output_for(ask: &Ask<'_>, instance: &Instance) -> u64 {
    let default = ask
        .table
        .slot(instance.key.0)
        .map_or(super::config::DEFAULT_MAX_TOKENS, |b| {
            b.config.default_max_tokens
        });
    max_output(ask.request, default)
}

fn max_output(request: &AdmissionRequest<'_>, default: u64) -> u64 {
    match request.api {
        Api::Embeddings => 0,
        _ => request.max_output_tokens.unwrap_or(default),
    }
}

/// The largest `defaultMaxTokens` of any budget (for the rejected-tokens metric only).
fn default_max_tokens(table: &Table) -> u64 {
    table
        .budgets()
        .map(|b| b.config.default_max_tokens)
        .max()
        .unwrap_or(super::config::DEFAULT_MAX_TOKENS)
}
