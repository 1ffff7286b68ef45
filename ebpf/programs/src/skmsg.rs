//! `sk_msg` (local-socket acceleration, off by default): a message sent on a socket filed in
//! `PEERS` goes straight into the receive queue of the socket filed under the reverse
//! addresses, skipping the TCP/IP stack of both ends. When there is no such socket the message
//! takes the normal path, and so does every later message of that socket (`TCP_PATH`): the
//! receiver reads redirected messages before its TCP queue, so a connection whose bytes took
//! both paths would be read out of order.
//!
//! Redirected messages bypass TCP's flow control: the kernel queues them at the receiver
//! without a receive-buffer limit, so a receiver that stops reading does not slow the sender.
//! That is why acceleration is opt-in (see the README).

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, BPF_NOEXIST},
    macros::sk_msg,
    programs::SkMsgContext,
};
use sluice_common::{accel::SockKey, counters::Counter};

use crate::{
    addr::own_key,
    maps::{PEERS, TCP_PATH, count},
};

const SK_PASS: u32 = 1;

#[sk_msg]
pub fn sluice_skmsg(ctx: SkMsgContext) -> u32 {
    let Some(own) = own_key(&ctx) else {
        return SK_PASS;
    };
    // SAFETY: only presence is read.
    if unsafe { TCP_PATH.get(own) }.is_some() {
        return SK_PASS;
    }
    // A missing peer leaves no redirect set, and SK_PASS then sends through TCP.
    if PEERS.redirect_msg(&ctx, own.peer(), u64::from(BPF_F_INGRESS)) != i64::from(SK_PASS) {
        if TCP_PATH.insert(own, 0, u64::from(BPF_NOEXIST)).is_err() {
            // Already there (a concurrent send) is fine; anything else is worth a count, since
            // a later message might then be redirected.
            count(Counter::AccelFileFailed);
        }
        count(Counter::AccelTcpPath);
    }
    SK_PASS
}

#[inline(always)]
fn own_key(ctx: &SkMsgContext) -> Option<SockKey> {
    own_key!(ctx.msg)
}
