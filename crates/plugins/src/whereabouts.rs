//! The `whereabouts` IPAM plugin: whereabouts configuration accepted unchanged, allocation
//! through a [`Store`].
//!
//! ADD is idempotent per attachment (podref + ifname, or container id + ifname without a
//! pod); DEL releases by (container id, ifname) and frees nothing twice; CHECK verifies the
//! attachment still holds its addresses; GC releases what `cni.dev/valid-attachments` does not
//! list; STATUS checks the store is usable.
//!
//! With the kubernetes datastore, ADD and DEL go through the node daemon when one listens on
//! `daemon_socket` ([`crate::ipam_daemon`]); otherwise the plugin writes the IPPools itself.

use std::net::IpAddr;

use netattach_cluster::meta_config::LogLevel;
use netattach_cni::error::{CniError, code};
use netattach_cni::result::{CniResult, Dns, IpConfig, Route};
use netattach_cni::skel::{Plugin, Request};
use netattach_ipam::config::{Datastore, FlatFileSearch, IpamConfig};
use netattach_ipam::error::{ErrorKind, IpamError};
use netattach_ipam::local::FileStore;
use netattach_ipam::range::pool_name;
use netattach_ipam::store::{Allocation, AllocationRequest, GcRequest, Owner, Store};
use netattach_ippool::{KubeStore, pool_namespace};
use serde_json::Value;

use crate::errors::from_ipam;
use crate::ipam_daemon;

/// The whereabouts-compatible IPAM plugin.
#[derive(Debug, Clone, Default)]
pub struct Whereabouts {
    /// Where to look for the whereabouts flat file (`whereabouts.conf`).
    pub search: FlatFileSearch,
}

impl Whereabouts {
    /// Reads the config (flat file merged) and applies its `log_level` and `log_file`.
    fn load(&self, req: &Request) -> Result<IpamConfig, IpamError> {
        let cfg = IpamConfig::from_netconf_with(&Value::Object(req.conf.raw.clone()), &self.search)?;
        let level = cfg
            .log_level
            .as_deref()
            .and_then(|l| match l.parse::<LogLevel>() {
                Ok(level) => Some(level.filter()),
                Err(()) => {
                    // whereabouts keeps its default on an unknown level too.
                    tracing::warn!(
                        log_level = l,
                        "unknown ipam.log_level ignored; use debug, verbose, error or panic"
                    );
                    None
                }
            });
        crate::logging::configure(level, cfg.log_file.as_deref());
        Ok(cfg)
    }
}

/// Opens the store a configuration names.
pub fn open_store(cfg: &IpamConfig) -> Result<Box<dyn Store>, CniError> {
    match &cfg.datastore {
        Datastore::Local { dir } => Ok(Box::new(FileStore::new(dir).map_err(|e| from_ipam(&e))?)),
        // whereabouts' IPPool objects, written directly with resourceVersion-checked updates.
        Datastore::Kubernetes => Ok(Box::new(KubeStore::open(cfg).map_err(|e| from_ipam(&e))?)),
    }
}

/// Allocate: through the node daemon when the kubernetes datastore has one, else directly.
pub fn allocate(cfg: &IpamConfig, request: &AllocationRequest) -> Result<Vec<Allocation>, CniError> {
    if let (Datastore::Kubernetes, Some(socket)) = (&cfg.datastore, &cfg.daemon_socket) {
        let namespace = pool_namespace(cfg).map_err(|e| from_ipam(&e))?;
        if let Some(allocations) = ipam_daemon::allocate(socket, &namespace, request)? {
            return Ok(allocations);
        }
    }
    open_store(cfg)?.allocate(request).map_err(|e| from_ipam(&e))
}

/// Release (whereabouts DEL over the configuration's pools): through the node daemon when the
/// kubernetes datastore has one, else directly. Returns how many addresses were freed.
pub fn release(cfg: &IpamConfig, who: &Owner) -> Result<usize, CniError> {
    if let (Datastore::Kubernetes, Some(socket)) = (&cfg.datastore, &cfg.daemon_socket) {
        let namespace = pool_namespace(cfg).map_err(|e| from_ipam(&e))?;
        let pools: Vec<String> = cfg
            .ranges
            .iter()
            .map(|r| pool_name(cfg.network_name.as_deref(), &r.cidr))
            .collect();
        if let Some(released) = ipam_daemon::release(socket, &namespace, &pools, who)? {
            if released.queued {
                tracing::warn!(owner = %who, "the API server is unreachable: the node daemon queued the release");
            }
            return Ok(released.freed.len());
        }
    }
    let store = match open_store(cfg) {
        Ok(s) => s,
        // A store that cannot be configured (e.g. no kubeconfig) held nothing for us.
        Err(e) if e.code == code::UNSUPPORTED_FIELD || e.code == code::INVALID_NETWORK_CONFIG => {
            return Ok(0);
        }
        Err(e) => return Err(e),
    };
    Ok(store.release(who).map_err(|e| from_ipam(&e))?.len())
}

fn owner(req: &Request) -> Owner {
    Owner::new(
        req.inv.container_id.clone(),
        req.inv.args.podref(),
        req.inv.ifname.clone(),
    )
}

/// Static addresses asked for: `runtimeConfig.ips` (the `ips` capability), then `args.cni.ips`,
/// then `CNI_ARGS IP` (ignored when `args` carries them, per the conventions).
fn requested_ips(req: &Request) -> Result<Vec<IpAddr>, CniError> {
    let from_list = |v: &Value, field: &str| -> Result<Vec<IpAddr>, CniError> {
        let Value::Array(items) = v else {
            return Err(CniError::invalid_config(format!(
                "field `{field}`: value {v} is not a list"
            )));
        };
        items
            .iter()
            .map(|item| {
                let s = item.as_str().unwrap_or_default();
                s.split('/').next().unwrap_or_default().parse::<IpAddr>().map_err(|_| {
                    CniError::invalid_config(format!(
                        "field `{field}`: value {item} is not an IP address; fix: write addresses like \"192.168.4.10/24\""
                    ))
                })
            })
            .collect()
    };
    if let Some(v) = req.conf.runtime_config().and_then(|rc| rc.get("ips")) {
        return from_list(v, "runtimeConfig.ips");
    }
    if let Some(v) = req
        .conf
        .get("args")
        .and_then(|a| a.get("cni"))
        .and_then(|c| c.get("ips"))
    {
        return from_list(v, "args.cni.ips");
    }
    req.inv.args.ips()
}

impl Plugin for Whereabouts {
    fn about(&self) -> String {
        format!(
            "netattach whereabouts-compatible IPAM plugin {}",
            env!("CARGO_PKG_VERSION")
        )
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let cfg = self.load(req).map_err(|e| from_ipam(&e))?;
        let mut request = AllocationRequest::new(owner(req), cfg.ranges.clone(), cfg.network_name.clone());
        request.requested = requested_ips(req)?;
        request.overlapping_ranges = cfg.enable_overlapping_ranges;
        let allocations = allocate(&cfg, &request)?;
        let mut ips: Vec<IpConfig> = allocations
            .iter()
            .map(|a| IpConfig {
                address: a.cidr,
                gateway: a.gateway,
                interface: None,
            })
            .collect();
        ips.extend(cfg.addresses.iter().map(|s| IpConfig {
            address: s.address,
            gateway: s.gateway,
            interface: None,
        }));
        let routes = cfg
            .routes
            .iter()
            .map(|r| Route {
                dst: r.dst,
                gw: r.gw,
                mtu: r.mtu,
                advmss: r.advmss,
                priority: r.priority,
                table: r.table,
                scope: r.scope.and_then(|s| u8::try_from(s).ok()),
            })
            .collect();
        let dns = cfg
            .dns
            .map(|d| Dns {
                nameservers: d.nameservers,
                domain: d.domain,
                search: d.search,
                options: d.options,
            })
            .unwrap_or_default();
        tracing::info!(owner = %request.owner, ips = ?ips.iter().map(|i| i.address).collect::<Vec<_>>(), "allocated");
        Ok(CniResult {
            interfaces: Vec::new(),
            ips,
            routes,
            dns,
        })
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let cfg = match self.load(req) {
            Ok(cfg) => cfg,
            // A config that does not load could not have allocated anything: the runtime's
            // DEL after a refused ADD must succeed, or it retries forever.
            Err(e) if matches!(e.kind(), ErrorKind::InvalidConfig | ErrorKind::UnsupportedField) => {
                tracing::warn!(error = %e, "DEL with an invalid IPAM config: nothing to release");
                return Ok(());
            }
            Err(e) => return Err(from_ipam(&e)),
        };
        let freed = release(&cfg, &owner(req))?;
        tracing::info!(owner = %owner(req), freed, "released");
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let cfg = self.load(req).map_err(|e| from_ipam(&e))?;
        let store = open_store(&cfg)?;
        let who = owner(req);
        let held = store.check(&who).map_err(|e| from_ipam(&e))?;
        let prev = req.conf.prev_result()?;
        let missing: Vec<IpAddr> = prev
            .iter()
            .flat_map(|p| &p.ips)
            .map(|ip| ip.address.addr())
            .filter(|ip| cfg.ranges.iter().any(|r| r.contains(*ip)) && !held.iter().any(|a| a.ip == *ip))
            .collect();
        // The node daemon answers an ADD once the address's reservation is created and writes
        // the pool entry just after: an address its reservation names for this attachment is
        // held.
        let mut claimed_ahead: Vec<IpAddr> = Vec::new();
        if !missing.is_empty()
            && cfg.enable_overlapping_ranges
            && matches!(cfg.datastore, Datastore::Kubernetes)
        {
            let kube = KubeStore::open(&cfg).map_err(|e| from_ipam(&e))?;
            for ip in &missing {
                let named = kube.block_on(kube.ipam().reservation_names(
                    *ip,
                    cfg.network_name.as_deref(),
                    &who,
                ));
                if named.map_err(|e| from_ipam(&e))? {
                    claimed_ahead.push(*ip);
                }
            }
        }
        if held.is_empty() && claimed_ahead.is_empty() {
            return Err(CniError::new(
                code::CHECK_FAILED,
                "attachment holds no address",
                format!("{who} holds no address"),
            ));
        }
        if let Some(prev) = prev {
            for ip in &prev.ips {
                if missing.contains(&ip.address.addr()) && !claimed_ahead.contains(&ip.address.addr()) {
                    return Err(CniError::new(
                        code::CHECK_FAILED,
                        "attachment lost its address",
                        format!("{who} no longer holds {} from prevResult", ip.address),
                    ));
                }
            }
        }
        Ok(())
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let unavailable =
            |e: CniError| CniError::new(code::PLUGIN_NOT_AVAILABLE, "IPAM store not available", e.details);
        let cfg = self.load(req).map_err(|e| unavailable(from_ipam(&e)))?;
        let store = open_store(&cfg).map_err(unavailable)?;
        store.allocations().map_err(|e| unavailable(from_ipam(&e)))?;
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let cfg = self.load(req).map_err(|e| from_ipam(&e))?;
        let store = open_store(&cfg)?;
        let valid: Vec<(String, String)> = req
            .conf
            .valid_attachments()?
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        let gc = GcRequest {
            valid: &valid,
            network_name: cfg.network_name.as_deref(),
            ranges: &cfg.ranges,
            // The runtime runs GC exclusively (no ADD in flight), so nothing needs an age grace.
            min_age_secs: 0,
        };
        let freed = store.gc(&gc).map_err(|e| from_ipam(&e))?;
        tracing::info!(freed = freed.len(), "gc");
        Ok(())
    }
}
