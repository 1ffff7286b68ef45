//! `LOCALITY`: the model-serving pods on this node and their accelerators, keyed by pod IP.
//!
//! Written by the agent from its pod cache (GPU requests such as `nvidia.com/gpu`); read by
//! routing to prefer endpoints next to the accelerator, and by `bpftool`/`sluice inspect`.

/// A pod IP as an IPv6 address; IPv4 is IPv4-mapped (`::ffff:a.b.c.d`), as in `INTERCEPT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalityKey {
    pub addr: [u8; 16],
}

const _: () = assert!(size_of::<LocalityKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalityValue {
    /// Accelerators the pod requests (sum over its containers and vendors).
    pub gpus: u32,
    /// `LOCALITY_*` bits.
    pub flags: u32,
}

const _: () = assert!(size_of::<LocalityValue>() == 8);

/// The pod is an endpoint of an InferencePool.
pub const LOCALITY_POOL_MEMBER: u32 = 1;
/// The pod is Ready.
pub const LOCALITY_READY: u32 = 2;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, no implicit padding (sizes asserted), any bit pattern is valid.
    unsafe impl aya::Pod for super::LocalityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LocalityValue {}
}
