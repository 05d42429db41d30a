//! The Kubernetes-facing contract of netattach, as pure logic.
//!
//! This crate owns what Multus users already wrote and what Longhorn already reads:
//!
//! - [`annotation`]: the `k8s.v1.cni.cncf.io/networks` and `v1.multus-cni.io/default-network`
//!   pod annotations (comma and JSON forms) into [`annotation::NetworkSelection`]s;
//! - [`status`]: the `k8s.v1.cni.cncf.io/network-status` annotation, in Multus' exact format;
//! - [`meta_config`]: the configuration of the `netattach` meta-plugin (CNI type `netattach`);
//! - [`delegates`]: which networks a pod gets, in which order, on which interface, with which
//!   config, runtimeConfig and CNI_ARGS (the Multus delegate contract), plus libcni's
//!   per-plugin request building;
//! - [`record`]: the durable local record of what ADD did, so DEL can undo it;
//! - [`multus_cache`]: reading the scratch cache Multus left behind, so DEL cleans up pods that
//!   Multus created;
//! - [`local_source`]: NetworkAttachmentDefinitions from YAML files, for the lab;
//! - [`daemon_api`]: the node daemon's unix-socket protocol, shared by shim and daemon.
//!
//! There is no Kubernetes client and no netlink here. The only file I/O is
//! [`delegates::DirConfSource`] (CNI config files), [`record`] (the attachment record),
//! [`multus_cache::read`] and [`local_source`] (NAD files for the lab).

#![allow(
    clippy::result_large_err,
    reason = "errors carry field, value, problem and fix as text; they are built once per failed CNI call, where clarity beats a few bytes of Result size"
)]

pub mod annotation;
pub mod daemon_api;
pub mod delegates;
pub mod error;
pub mod local_source;
pub mod meta_config;
pub mod multus_cache;
pub mod record;
pub mod status;

mod util;

pub use annotation::{NetworkSelection, parse_default_network, parse_networks};
pub use delegates::{
    ConfSource, Delegate, DirConfSource, Nad, NadSource, PodInfo, SourceError, cni_args_for, plugin_request,
    resolve,
};
pub use error::{AnnotationError, ConfigError, Error};
pub use meta_config::MetaConfig;
pub use record::{AttachmentRecord, RecordedDelegate};
pub use status::NetworkStatus;
