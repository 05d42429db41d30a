//! netattach IPAM: the whereabouts-compatible address model and allocator.
//!
//! Owns: the whereabouts IPAM configuration ([`config`]), address ranges and offsets
//! ([`range`]), the pool document and allocation transactions ([`pool`]), the [`Store`] trait
//! ([`store`]) and the local file store ([`local`]). Pure: no netlink, no Kubernetes client, no
//! CNI types. Callers map [`ErrorKind`] to CNI error codes.

pub mod config;
pub mod error;
pub mod local;
pub mod pool;
pub mod range;
pub mod store;

pub use config::{Datastore, Dns, FlatFileSearch, IpamConfig, RouteConfig, StaticAddress};
pub use error::{ConfigError, ErrorKind, IpamError};
pub use local::FileStore;
pub use pool::{PoolDoc, Reservation};
pub use range::{IpRange, pool_name};
pub use store::{Allocation, AllocationRequest, GcRequest, Owner, Store};
