//! The XDP entry point: chosen frames go into the AF_XDP socket of their RX queue.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use common::Counter;

use crate::{
    classify::{Frame, classify, count, remember},
    maps::XSKS,
};

#[xdp]
pub fn pop3_intercept(ctx: XdpContext) -> u32 {
    count(Counter::FramesSeen);
    match try_intercept(&ctx) {
        Ok(action) => action,
        // A frame we cannot parse is not ours to judge: hand it to the kernel.
        Err(()) => xdp_action::XDP_PASS,
    }
}

fn try_intercept(ctx: &XdpContext) -> Result<u32, ()> {
    // XDP sees every tag in the frame itself.
    let Some(taken) = classify(ctx, 2)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    // SAFETY: ctx.ctx points at the live xdp_md for this invocation.
    let queue = unsafe { (*ctx.ctx).rx_queue_index };
    match XSKS.redirect(queue, u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => {
            count(Counter::Redirected);
            if taken.flow.is_syn {
                // The daemon mirrors this header for every reply of the flow.
                write(ctx, 0, &taken.macs)?;
            }
            remember(&taken);
            Ok(action)
        }
        Err(_) => {
            count(Counter::FallbackPassed);
            Ok(xdp_action::XDP_PASS)
        }
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Result<T, ()> {
        let start = self.data();
        if start + offset + core::mem::size_of::<T>() > self.data_end() {
            return Err(());
        }
        // SAFETY: the range was checked against data_end just above; unaligned read.
        Ok(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: ctx points at the live xdp_md for this invocation.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn context(&self) -> *mut core::ffi::c_void {
        self.ctx.cast()
    }
}

/// Writes `bytes` at `offset` from the start of the frame, bounds-checked for the verifier.
#[inline(always)]
fn write<const N: usize>(ctx: &XdpContext, offset: usize, bytes: &[u8; N]) -> Result<(), ()> {
    let start = ctx.data();
    if start + offset + N > ctx.data_end() {
        return Err(());
    }
    let dst = (start + offset) as *mut u8;
    // Byte by byte: a block copy compiles to pointer shifts the verifier refuses.
    for (i, byte) in bytes.iter().enumerate() {
        // SAFETY: the range was checked against data_end just above.
        unsafe { core::ptr::write_volatile(dst.add(i), *byte) };
    }
    Ok(())
}
