//! The CNI protocol (spec 1.1.0), both sides.
//!
//! This crate owns everything that is pure protocol: versions and their negotiation
//! ([`version`]), error codes and the error result ([`error`]), network configuration
//! ([`config`]), results and their conversion between layouts ([`result`]), the plugin
//! environment and `CNI_ARGS` ([`mod@env`], [`args`]), the plugin skeleton that turns
//! environment + stdin into a command and writes the answer ([`skel`]), and the runtime
//! side that finds, executes and parses a plugin ([`exec`]).
//!
//! It knows nothing about Linux network devices or Kubernetes.

pub mod args;
pub mod config;
pub mod env;
pub mod error;
pub mod exec;
pub mod result;
pub mod skel;
pub mod version;

pub use args::CniArgs;
pub use config::NetConf;
pub use env::{Command, Invocation};
pub use error::{CniError, code};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::Version;
