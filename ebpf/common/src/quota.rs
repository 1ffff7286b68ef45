//! Keys and values of the `QUOTA` hash map: the node's token-budget state, one entry per
//! (tenant, budget, window, dimension), mirrored by the agent so that `bpftool map dump`,
//! `sluice inspect quotas` and a restarted agent all see it, and so that connect4 can refuse
//! new connections of a tenant whose budget is exhausted.
//!
//! Tenants and budgets are named by 64-bit FNV-1a hashes of their names ([`fnv1a64`]): stable
//! across agent versions and nodes, fixed-size for the kernel. The names themselves ride in the
//! value (NUL-padded, truncated) for people reading a dump.

/// Bytes of a name kept in a [`QuotaValue`] (display only; longer names are truncated).
pub const NAME_LEN: usize = 64;

/// `QuotaKey::dimension` of the one entry per tenant that connect4 consults: its value's
/// `flags` say whether new connections of that tenant are refused.
pub const DIMENSION_CONNECT: u32 = u32::MAX;

/// The value is exhausted: no further request fits in the current window.
pub const FLAG_EXHAUSTED: u32 = 1 << 0;
/// The budget's policy says `enforceAt: Connect`.
pub const FLAG_ENFORCE_CONNECT: u32 = 1 << 1;
/// The budget is shared by the cluster (`limit` is the cluster's; `lease` is this node's part).
pub const FLAG_CLUSTER: u32 = 1 << 2;
/// The cluster store was unreachable when this entry was written: node-local enforcement.
pub const FLAG_DEGRADED: u32 = 1 << 3;

/// What is counted. The discriminant is `QuotaKey::dimension`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    InputTokens = 0,
    OutputTokens = 1,
    TotalTokens = 2,
    Requests = 3,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QuotaKey {
    /// [`fnv1a64`] of the tenant's name.
    pub tenant_id: u64,
    /// [`budget_id`] of the budget (and model, for per-model budgets); 0 for the connect entry.
    pub budget_id: u64,
    /// Length of the window in seconds; 0 for the connect entry.
    pub window_secs: u32,
    /// A [`Dimension`], or [`DIMENSION_CONNECT`].
    pub dimension: u32,
}

const _: () = assert!(size_of::<QuotaKey>() == 24);
const _: () = assert!(align_of::<QuotaKey>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaValue {
    /// The budget's limit for this window (the cluster's limit for cluster budgets).
    pub limit: u64,
    /// Settled usage in the current window.
    pub used: u64,
    /// Reservations of requests still in flight.
    pub reserved: u64,
    /// Cluster budgets: tokens this node holds a claim on in the cluster store; 0 otherwise.
    pub lease: u64,
    /// Usage that did not fit into a past window and is charged to the following ones.
    pub debt: u64,
    /// End of the current window, Unix time in milliseconds.
    pub window_end_ms: u64,
    /// `FLAG_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// Tenant name, NUL-padded (display only).
    pub tenant: [u8; NAME_LEN],
    /// Budget name, `name/model` for per-model budgets, NUL-padded (display only).
    pub budget: [u8; NAME_LEN],
}

const _: () = assert!(size_of::<QuotaValue>() == 7 * 8 + 2 * NAME_LEN);
const _: () = assert!(align_of::<QuotaValue>() == 8);

/// Key of `QUOTA_TENANTS`: a caller's cgroup under the policy whose rule matched its connect.
/// The value is the caller's tenant id ([`fnv1a64`] of its name, as in [`QuotaKey`]), derived
/// with that policy's tenant key. The agent keeps entries only for callers whose tenant has a
/// budget enforced at connect, so for everyone else connect4's check is one failed lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallerKey {
    /// `bpf_get_current_cgroup_id()`: the inode of the caller's cgroup (every cgroup of a pod,
    /// containers included, has its own entry).
    pub cgroup_id: u64,
    /// The matching rule's `policy_id`.
    pub policy_id: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<CallerKey>() == 16);

/// Whether a `DIMENSION_CONNECT` entry refuses new connections.
pub const fn refuses_connect(value: &QuotaValue) -> bool {
    value.flags & (FLAG_EXHAUSTED | FLAG_ENFORCE_CONNECT) == FLAG_EXHAUSTED | FLAG_ENFORCE_CONNECT
}

/// The key of a tenant's `DIMENSION_CONNECT` entry.
pub const fn connect_key(tenant_id: u64) -> QuotaKey {
    QuotaKey {
        tenant_id,
        budget_id: 0,
        window_secs: 0,
        dimension: DIMENSION_CONNECT,
    }
}

impl Default for QuotaValue {
    fn default() -> Self {
        Self {
            limit: 0,
            used: 0,
            reserved: 0,
            lease: 0,
            debt: 0,
            window_end_ms: 0,
            flags: 0,
            _pad: 0,
            tenant: [0; NAME_LEN],
            budget: [0; NAME_LEN],
        }
    }
}

// === impl Dimension ===

impl Dimension {
    pub const ALL: [Dimension; 4] = [
        Dimension::InputTokens,
        Dimension::OutputTokens,
        Dimension::TotalTokens,
        Dimension::Requests,
    ];

    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Dimension::InputTokens),
            1 => Some(Dimension::OutputTokens),
            2 => Some(Dimension::TotalTokens),
            3 => Some(Dimension::Requests),
            _ => None,
        }
    }

    /// A stable label, used by `sluice inspect`, Prometheus and the cluster store's keys.
    pub const fn label(self) -> &'static str {
        match self {
            Dimension::InputTokens => "input_tokens",
            Dimension::OutputTokens => "output_tokens",
            Dimension::TotalTokens => "total_tokens",
            Dimension::Requests => "requests",
        }
    }
}

// === impl QuotaValue ===

impl QuotaValue {
    /// What is left in the current window (0 when exhausted or in debt).
    pub const fn remaining(&self) -> u64 {
        self.limit
            .saturating_sub(self.used.saturating_add(self.reserved))
    }
}

/// 64-bit FNV-1a. Chosen for being trivial, stable forever and identical on every node; the
/// inputs are names the operator controls, so collision resistance against an adversary is
/// not needed (a collision merges two tenants' budgets: conservative, never a bypass).
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_extend(FNV_OFFSET, bytes)
}

/// Continues an FNV-1a hash over more bytes (`fnv1a64(a ++ b) == fnv1a64_extend(fnv1a64(a), b)`).
pub const fn fnv1a64_extend(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The id of a budget, or of one model's budget when the budget is per model
/// (`name`, a NUL byte, `model`: a NUL cannot occur in either name).
pub const fn budget_id(name: &str, model: Option<&str>) -> u64 {
    let h = fnv1a64(name.as_bytes());
    match model {
        None => h,
        Some(m) => fnv1a64_extend(fnv1a64_extend(h, &[0]), m.as_bytes()),
    }
}

/// `name` as a NUL-padded fixed-size field, truncated at a character boundary.
pub fn encode_name(name: &str) -> [u8; NAME_LEN] {
    let mut out = [0; NAME_LEN];
    let mut end = name.len().min(NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&name.as_bytes()[..end]);
    out
}

/// The name in a NUL-padded field (lossy for bytes that are not UTF-8).
#[cfg(not(target_arch = "bpf"))]
pub fn decode_name(field: &[u8; NAME_LEN]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(NAME_LEN);
    String::from_utf8_lossy(&field[..end]).into_owned()
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, no implicit padding (sizes asserted), any bit pattern is valid.
    unsafe impl aya::Pod for super::QuotaKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::QuotaValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CallerKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv, test vectors).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a64_extend(fnv1a64(b"foo"), b"bar"), fnv1a64(b"foobar"));
    }

    #[test]
    fn budget_ids_separate_models_and_names() {
        assert_eq!(budget_id("b", None), fnv1a64(b"b"));
        assert_eq!(budget_id("b", Some("m")), fnv1a64(b"b\0m"));
        assert_ne!(budget_id("b", Some("m")), budget_id("bm", None));
        assert_ne!(budget_id("b", Some("")), budget_id("b", None));
    }

    #[test]
    fn names_round_trip_and_truncate_on_char_boundary() {
        assert_eq!(decode_name(&encode_name("team-a")), "team-a");
        let long = "é".repeat(40); // 80 bytes, 2 per char
        let enc = encode_name(&long);
        assert_eq!(decode_name(&enc), "é".repeat(32));
        let odd = format!("x{}", "é".repeat(40)); // boundary falls inside a char at 64
        assert_eq!(
            decode_name(&encode_name(&odd)),
            format!("x{}", "é".repeat(31))
        );
    }

    #[test]
    fn value_layout_is_stable() {
        // The byte offsets are what bpftool, the kernel and a restarted agent agree on.
        assert_eq!(core::mem::offset_of!(QuotaValue, limit), 0);
        assert_eq!(core::mem::offset_of!(QuotaValue, window_end_ms), 40);
        assert_eq!(core::mem::offset_of!(QuotaValue, flags), 48);
        assert_eq!(core::mem::offset_of!(QuotaValue, tenant), 56);
        assert_eq!(core::mem::offset_of!(QuotaValue, budget), 120);
        assert_eq!(core::mem::offset_of!(QuotaKey, window_secs), 16);
        assert_eq!(core::mem::offset_of!(QuotaKey, dimension), 20);
    }

    #[test]
    fn remaining_saturates() {
        let v = QuotaValue {
            limit: 10,
            used: 8,
            reserved: 5,
            ..QuotaValue::default()
        };
        assert_eq!(v.remaining(), 0);
        let v = QuotaValue {
            limit: 10,
            used: 3,
            reserved: 2,
            ..QuotaValue::default()
        };
        assert_eq!(v.remaining(), 5);
    }

    #[test]
    fn only_exhausted_connect_enforced_entries_refuse() {
        let with = |flags| QuotaValue {
            flags,
            ..QuotaValue::default()
        };
        assert!(refuses_connect(&with(
            FLAG_EXHAUSTED | FLAG_ENFORCE_CONNECT
        )));
        assert!(refuses_connect(&with(
            FLAG_EXHAUSTED | FLAG_ENFORCE_CONNECT | FLAG_CLUSTER
        )));
        assert!(!refuses_connect(&with(FLAG_EXHAUSTED)));
        assert!(!refuses_connect(&with(FLAG_ENFORCE_CONNECT)));
        assert_eq!(connect_key(7).dimension, DIMENSION_CONNECT);
        assert_eq!(core::mem::offset_of!(CallerKey, policy_id), 8);
    }

    #[test]
    fn dimensions_round_trip() {
        for d in Dimension::ALL {
            assert_eq!(Dimension::from_u32(d as u32), Some(d));
        }
        assert_eq!(Dimension::from_u32(DIMENSION_CONNECT), None);
    }
}
