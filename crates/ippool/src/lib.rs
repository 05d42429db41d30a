//! netattach's Kubernetes IPAM store: whereabouts `IPPool` and `OverlappingRangeIPReservation`
//! objects (group `whereabouts.cni.cncf.io/v1alpha1`), read and written exactly as whereabouts
//! does, so a cluster switches from whereabouts with its live allocations intact.
//!
//! * [`crd`]: the typed custom resources and whereabouts' object naming.
//! * [`store`]: [`KubeIpam`] (async, for the node daemon) and [`KubeStore`] (the sync
//!   [`netattach_ipam::Store`] for the plugin binary): optimistic, resourceVersion-checked
//!   writes with jittered backoff, no lease.
//! * [`batch`]: [`BatchingIpam`], the node daemon's engine: a node's concurrent requests for
//!   one pool folded into one write; with overlapping ranges, an address claimed by its
//!   reservation first and entered in the pool after.
//! * [`claim`]: the reservations that claim an address ahead of its pool entry.
//! * [`gc`]: what the daemon's cluster-wide garbage collector needs: held addresses, and a
//!   free that only removes a reservation still exactly as observed.
//! * [`retry`]: the backoff policy.
//! * [`usage`]: per-pool size, used, free and exhausted, and their Prometheus rendering.
//! * [`admin`]: operator access: who holds each address (pod, node, age), release by hand.
//! * [`turn`]: the nodes' turns at a contended pool; [`watch`]: the watch caches behind them.
//!
//! The allocation logic itself is the pure one of [`netattach_ipam::pool`]; this crate only
//! moves documents between it and the API server.

pub mod admin;
pub mod batch;
pub mod claim;
pub mod crd;
pub mod gc;
pub mod retry;
pub mod store;
pub mod turn;
pub mod usage;
pub mod watch;

pub use batch::BatchingIpam;
pub use crd::{
    IPAllocation, IPPool, IPPoolSpec, OverlappingRangeIPReservation, OverlappingRangeIPReservationSpec,
};
pub use retry::RetryPolicy;
pub use store::{
    DEFAULT_NAMESPACE, KubeIpam, KubeStore, ListedPools, StatsSnapshot, UnreadablePool, pool_namespace,
};
pub use usage::{PoolUsage, pool_usages, render_prometheus};
