//! Shared fixtures for the root integration tests: a root check that fails loudly, unique
//! namespace names, and a namespace + netlink handle bundle that cleans up on Drop.
//!
//! Every link, address and route these tests make lives inside namespaces they created;
//! nothing touches the host namespace's interfaces.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use netattach_netdev::{Handle, NamedNetns, Netns};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fail (never skip) when not root.
pub fn require_root() {
    let euid = nix::unistd::Uid::effective();
    assert!(
        euid.is_root(),
        "these netdev integration tests need root (CAP_NET_ADMIN + CAP_SYS_ADMIN); running as uid {euid}. \
         Run them as root, e.g. `sudo -E cargo test -p netattach-netdev`."
    );
}

/// A namespace name unique across processes and tests: `nat-<pid>-<n>`.
pub fn unique_name() -> String {
    format!(
        "nat-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh named namespace with an open handle and a netlink socket inside it.
pub struct TestNs {
    pub h: Handle,
    pub ns: Netns,
    pub named: NamedNetns,
}

impl TestNs {
    pub fn new() -> TestNs {
        require_root();
        let named = NamedNetns::create(&unique_name()).expect("create netns");
        let ns = named.netns().expect("open netns");
        let h = Handle::in_netns(&ns).expect("netlink handle in netns");
        TestNs { h, ns, named }
    }

    pub fn index(&mut self, name: &str) -> u32 {
        self.h
            .link_index(name)
            .unwrap_or_else(|e| panic!("link {name} in {}: {e}", self.named.name()))
    }

    pub fn up(&mut self, name: &str) {
        let i = self.index(name);
        self.h.set_up(i).expect("set up");
    }
}

/// Poll `f` every 50 ms until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}
