//! The TC entry point (ingress, a TCX link, or a netlink filter on a clsact qdisc on
//! kernels without TCX): chosen skbs are redirected to the daemon's TAP device, whose
//! reader feeds the same terminator as the AF_XDP sockets.
//! Working on skbs leaves offloads such as the veth peer's TSO alone, which an attached
//! XDP program turns off.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT},
    helpers::generated::{bpf_ktime_get_ns, bpf_redirect},
    macros::classifier,
    programs::TcContext,
};
use common::{Counter, HEARTBEAT_GRACE_NS};

use crate::{
    classify::{Frame, classify, count, remember},
    maps::CONFIG,
};

#[classifier]
pub fn pop3_intercept_tc(ctx: TcContext) -> i32 {
    count(Counter::FramesSeen);
    match try_intercept(&ctx) {
        Ok(action) => action,
        // A frame we cannot parse is not ours to judge: hand it to the kernel.
        Err(()) => TC_ACT_OK as i32,
    }
}

fn try_intercept(ctx: &TcContext) -> Result<i32, ()> {
    // SAFETY: ctx.skb points at the live __sk_buff for this invocation.
    let vlan_in_metadata = unsafe { (*ctx.skb.skb).vlan_present } != 0;
    // The kernel takes the outer tag out of the frame into the skb's metadata before TC
    // runs (and puts it back when the TAP hands the frame to the daemon).
    let inline_tags = if vlan_in_metadata { 1 } else { 2 };
    let Some(taken) = classify(ctx, inline_tags)? else {
        return Ok(TC_ACT_OK as i32);
    };
    // Zero until the daemon's TAP is up: until then (and never without it) the kernel
    // keeps every frame, as XDP does when a queue has no socket.
    let Some(config) = CONFIG.get(0) else {
        return Ok(TC_ACT_OK as i32);
    };
    let tap = config.redirect_ifindex;
    // A netlink filter outlives a killed daemon (and its TAP, where a redirect would drop):
    // without a recent heartbeat the kernel keeps every frame.
    // SAFETY: helper without preconditions.
    let stale = config.heartbeat_ns != 0
        && unsafe { bpf_ktime_get_ns() }.saturating_sub(config.heartbeat_ns) > HEARTBEAT_GRACE_NS;
    if tap == 0 || stale {
        count(Counter::FallbackPassed);
        return Ok(TC_ACT_OK as i32);
    }
    if taken.flow.is_syn {
        // The daemon mirrors this header for every reply of the flow.
        ctx.store(0, &taken.macs, 0).map_err(|_| ())?;
    }
    // SAFETY: helper without preconditions; 0 = to the device's egress, i.e. the reader.
    let action = unsafe { bpf_redirect(tap, 0) } as i32;
    if action != TC_ACT_REDIRECT as i32 {
        count(Counter::FallbackPassed);
        return Ok(TC_ACT_OK as i32);
    }
    count(Counter::Redirected);
    remember(&taken);
    Ok(action)
}

impl Frame for TcContext {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Result<T, ()> {
        let start = self.data();
        if start + offset + core::mem::size_of::<T>() <= self.data_end() {
            // SAFETY: the range was checked against data_end just above; unaligned read.
            return Ok(unsafe { core::ptr::read_unaligned((start + offset) as *const T) });
        }
        // Headers beyond the skb's linear part: a helper call (three times the cost of a
        // direct read, measured with `bpftool prog run`), rare on the paths that matter.
        self.load(offset).map_err(|_| ())
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: skb points at the live __sk_buff for this invocation.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn context(&self) -> *mut core::ffi::c_void {
        self.skb.skb.cast()
    }
}
