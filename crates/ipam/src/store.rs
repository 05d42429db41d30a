//! The store abstraction: who holds which address ([`Owner`], [`Allocation`]), what a caller asks
//! for ([`AllocationRequest`], [`GcRequest`]), and the [`Store`] trait every backend implements
//! with the same semantics (the local file store in [`crate::local`] today, a Kubernetes
//! `IPPool` store later; both keep one whereabouts-shaped document per pool, see
//! [`crate::pool`]).
//!
//! Semantics shared by all backends:
//! * ADD is idempotent per attachment: an owner that already holds an address in a pool gets the
//!   same address back (its container id is updated). The attachment identity is
//!   (podref, ifname) when the podref is known, else (container id, ifname).
//! * One address per range, all or nothing: if a later range fails nothing is written.
//! * Release matches (container id, ifname) like whereabouts DEL, or (podref, ifname) when the
//!   container id is empty. Releasing what is not held is a no-op, not an error.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::IpamError;
use crate::range::IpRange;

/// The attachment an address belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    /// CNI container id (sandbox id).
    pub container_id: String,
    /// `namespace/name` of the pod (from `K8S_POD_NAMESPACE`/`K8S_POD_NAME`), if known.
    pub podref: Option<String>,
    /// Interface name inside the container.
    pub ifname: String,
}

impl Owner {
    /// Build an owner; an empty podref counts as none.
    pub fn new(container_id: impl Into<String>, podref: Option<String>, ifname: impl Into<String>) -> Self {
        Owner {
            container_id: container_id.into(),
            podref: podref.filter(|p| !p.is_empty()),
            ifname: ifname.into(),
        }
    }

    fn podref(&self) -> Option<&str> {
        self.podref.as_deref().filter(|p| !p.is_empty())
    }

    /// Whether a reservation `(id, podref, ifname)` belongs to this attachment (ADD and CHECK
    /// identity): same interface and the same podref, or the same container id when the podrefs
    /// do not contradict each other.
    pub fn is_attachment_of(&self, id: &str, podref: &str, ifname: &str) -> bool {
        if ifname != self.ifname {
            return false;
        }
        if let Some(p) = self.podref()
            && p == podref
        {
            return true;
        }
        !self.container_id.is_empty()
            && id == self.container_id
            && (podref.is_empty() || self.podref().is_none_or(|p| p == podref))
    }

    /// Whether a reservation is released by this owner's DEL: same (container id, ifname), or
    /// same (podref, ifname) when the container id is empty.
    pub fn releases(&self, id: &str, podref: &str, ifname: &str) -> bool {
        if ifname != self.ifname {
            return false;
        }
        if !self.container_id.is_empty() {
            return id == self.container_id;
        }
        self.podref().is_some_and(|p| p == podref)
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.podref() {
            Some(p) => write!(
                f,
                "pod {p} interface {} (container {})",
                self.ifname, self.container_id
            ),
            None => write!(f, "container {} interface {}", self.container_id, self.ifname),
        }
    }
}

/// A request for one address per range.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AllocationRequest {
    /// Who asks.
    pub owner: Owner,
    /// The ranges; one address is allocated from each.
    pub ranges: Vec<IpRange>,
    /// `network_name` (pool name prefix and overlap scope).
    pub network_name: Option<String>,
    /// Specific addresses to reserve (at most one per range); each must be free or already held
    /// by this owner. A requested address may lie in an `exclude`d block or outside
    /// `range_start..=range_end` (that is how addresses are kept back for static use), but never
    /// be the network, broadcast or gateway address.
    pub requested: Vec<IpAddr>,
    /// whereabouts `enable_overlapping_ranges`: an address held in another pool of the same
    /// network name whose range overlaps is not handed out again.
    pub overlapping_ranges: bool,
}

impl AllocationRequest {
    /// A dynamic request with overlap checking on (the whereabouts default).
    pub fn new(owner: Owner, ranges: Vec<IpRange>, network_name: Option<String>) -> Self {
        AllocationRequest {
            owner,
            ranges,
            network_name,
            requested: Vec::new(),
            overlapping_ranges: true,
        }
    }
}

/// One held address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Allocation {
    /// The address.
    pub ip: IpAddr,
    /// The address with the range's prefix length.
    pub cidr: IpNet,
    /// The range's gateway (known on allocate; `None` in listings and releases, which do not
    /// carry range configuration).
    pub gateway: Option<IpAddr>,
    /// Pool name.
    pub pool: String,
    /// Container id of the holder.
    pub container_id: String,
    /// Pod of the holder.
    pub podref: Option<String>,
    /// Interface of the holder.
    pub ifname: String,
    /// When it was first allocated (unix seconds; 0 if unknown).
    pub allocated_at: u64,
}

/// A CNI GC request: release every allocation in the given ranges' pools whose
/// (container id, ifname) is not among the valid attachments.
#[derive(Debug, Clone, Copy)]
pub struct GcRequest<'a> {
    /// `cni.dev/valid-attachments`: (container id, ifname) pairs that must be kept.
    pub valid: &'a [(String, String)],
    /// `network_name` of the configuration.
    pub network_name: Option<&'a str>,
    /// The configuration's ranges: only their pools are collected.
    pub ranges: &'a [IpRange],
    /// Allocations younger than this many seconds are kept (protects an ADD that raced the
    /// runtime's list of valid attachments). 0 collects everything not valid.
    pub min_age_secs: u64,
}

/// A backend holding the allocations.
pub trait Store {
    /// Allocate one address per range (or return the ones the owner already holds).
    fn allocate(&self, req: &AllocationRequest) -> Result<Vec<Allocation>, IpamError>;
    /// Release the owner's addresses in every pool; returns what was freed (empty when nothing
    /// was held).
    fn release(&self, owner: &Owner) -> Result<Vec<Allocation>, IpamError>;
    /// Every allocation in the store.
    fn allocations(&self) -> Result<Vec<Allocation>, IpamError>;
    /// Release allocations whose attachment is not valid; returns what was freed.
    fn gc(&self, req: &GcRequest<'_>) -> Result<Vec<Allocation>, IpamError>;
    /// The addresses the owner holds (CNI CHECK), by ADD identity.
    fn check(&self, owner: &Owner) -> Result<Vec<Allocation>, IpamError>;
}
