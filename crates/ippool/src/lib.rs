//! netattach's Kubernetes IPAM store: whereabouts `IPPool` and `OverlappingRangeIPReservation`
//! objects (group `whereabouts.cni.cncf.io/v1alpha1`), read and written exactly as whereabouts
//! does, so a cluster switches from whereabouts with its live allocations intact.
//!
//! * [`crd`]: the typed custom resources and whereabouts' object naming.
//! * [`store`]: [`KubeIpam`] (async, for the node daemon) and [`KubeStore`] (the sync
//!   [`netattach_ipam::Store`] for the plugin binary): optimistic, resourceVersion-checked
//!   writes with jittered backoff, no lease.
//! * [`retry`]: the backoff policy.
//!
//! The allocation logic itself is the pure one of [`netattach_ipam::pool`]; this crate only
//! moves documents between it and the API server.

pub mod crd;
pub mod retry;
pub mod store;

pub use crd::{
    IPAllocation, IPPool, IPPoolSpec, OverlappingRangeIPReservation, OverlappingRangeIPReservationSpec,
};
pub use retry::RetryPolicy;
pub use store::{DEFAULT_NAMESPACE, KubeIpam, KubeStore, StatsSnapshot};
