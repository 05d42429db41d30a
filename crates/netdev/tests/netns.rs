//! Root tests for named namespaces, `Netns::open`/`run`, and per-namespace sysctls.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{TestNs, require_root, unique_name};
use netattach_netdev::netns::{NamedNetns, Netns, delete_named_netns, list_named_netns};
use netattach_netdev::{Handle, sysctl};

#[test]
fn named_netns_create_lists_opens_and_delete_removes_run_entry() {
    require_root();
    let name = unique_name();
    let named = NamedNetns::create(&name).expect("create");
    let path = Path::new("/run/netns").join(&name);
    assert_eq!(named.path(), path);
    assert_eq!(named.name(), name);
    assert!(path.exists());
    assert!(list_named_netns().unwrap().contains(&name));

    let ns = named.netns().expect("open");
    let host = Netns::current().expect("current");
    assert!(
        !ns.same_as(&host).unwrap(),
        "new namespace must differ from the caller's"
    );

    // lo is up inside, and the only link there.
    let mut h = Handle::in_netns(&ns).unwrap();
    let links = h.links().unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0].name, "lo");
    assert!(links[0].up, "lo must be up in a new named netns");

    named.delete().expect("delete");
    assert!(!path.exists(), "/run/netns entry must be gone");
    assert!(!list_named_netns().unwrap().contains(&name));
    // Idempotent delete of an absent name.
    delete_named_netns(&name).expect("second delete is Ok");
}

#[test]
fn named_netns_duplicate_name_is_already_exists_and_drop_cleans_up() {
    require_root();
    let name = unique_name();
    {
        let _a = NamedNetns::create(&name).expect("create");
        let e = NamedNetns::create(&name).expect_err("duplicate must fail");
        assert!(e.is_exists(), "{e}");
        assert_eq!(e.errno(), Some(libc::EEXIST));
        // The failed create must not have removed the first one's entry.
        assert!(Path::new("/run/netns").join(&name).exists());
    }
    assert!(
        !Path::new("/run/netns").join(&name).exists(),
        "Drop must delete the entry"
    );
}

#[test]
fn named_netns_keep_disarms_drop_and_delete_named_netns_removes_it() {
    require_root();
    let name = unique_name();
    let path = NamedNetns::create(&name).expect("create").keep();
    assert!(path.exists(), "keep() must leave the namespace");
    Netns::open(&path).expect("still a netns");
    delete_named_netns(&name).expect("delete");
    assert!(!path.exists());
}

#[test]
fn netns_names_with_slash_are_rejected() {
    let e = NamedNetns::create("a/b").expect_err("slash");
    assert!(e.is_invalid_argument(), "{e}");
    assert!(delete_named_netns("../x").is_err());
}

#[test]
fn netns_open_rejects_missing_paths_plain_files_and_other_namespace_types() {
    require_root();
    let e = Netns::open(Path::new("/run/netns/nat-does-not-exist-xyz")).expect_err("missing");
    assert!(e.is_not_found(), "{e}");
    let e = Netns::open(Path::new("/etc/hostname")).expect_err("plain file");
    assert!(e.is_invalid_argument(), "{e}");
    let e = Netns::open(Path::new("/proc/self/ns/mnt")).expect_err("mount namespace");
    assert!(e.is_invalid_argument(), "{e}");
    assert!(e.to_string().contains("not a network namespace"), "{e}");
    // /proc/<pid>/ns/net is accepted.
    let me = Netns::open(Path::new(&format!("/proc/{}/ns/net", std::process::id()))).expect("proc path");
    assert_eq!(
        me.path(),
        Path::new(&format!("/proc/{}/ns/net", std::process::id()))
    );
}

#[test]
fn netns_run_enters_the_namespace_on_another_thread_and_leaves_caller_alone() {
    let t = TestNs::new();
    let before = Netns::current().unwrap().id().unwrap();
    let caller = std::thread::current().id();
    let (inside, thread) =
        t.ns.run(|| {
            (
                Netns::current().unwrap().id().unwrap(),
                std::thread::current().id(),
            )
        })
        .unwrap();
    assert_eq!(
        inside,
        t.ns.id().unwrap(),
        "closure must run inside the namespace"
    );
    assert_ne!(thread, caller, "closure must run on a fresh thread");
    assert_eq!(
        Netns::current().unwrap().id().unwrap(),
        before,
        "caller's netns must not change"
    );
}

#[test]
fn netns_run_propagates_panics() {
    let t = TestNs::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = t.ns.run(|| panic!("boom"));
    }));
    assert!(r.is_err());
}

#[test]
fn sysctl_set_get_in_netns_does_not_change_host_value() {
    let t = TestNs::new();
    // lo's arp_notify: harmless even on the host (lo is NOARP), and present in every netns.
    let key = "net/ipv4/conf/lo/arp_notify";
    let host_before = std::fs::read_to_string(format!("/proc/sys/{key}"))
        .unwrap()
        .trim()
        .to_string();
    let want = if host_before == "1" { "0" } else { "1" };
    sysctl::set(&t.ns, key, want).expect("set");
    assert_eq!(sysctl::get(&t.ns, key).unwrap(), want);
    let host_after = std::fs::read_to_string(format!("/proc/sys/{key}"))
        .unwrap()
        .trim()
        .to_string();
    if host_after != host_before {
        // Put it back before failing.
        std::fs::write(format!("/proc/sys/{key}"), &host_before).unwrap();
    }
    assert_eq!(host_after, host_before, "host sysctl must be untouched");
}

#[test]
fn sysctl_rejects_dotdot_and_reports_missing_keys_as_not_found() {
    let t = TestNs::new();
    let e = sysctl::set(&t.ns, "net/../kernel/hostname", "x").expect_err("dotdot");
    assert!(e.is_invalid_argument(), "{e}");
    let e = sysctl::get(&t.ns, "net/ipv4/conf/nat-nope/arp_notify").expect_err("missing");
    assert!(e.is_not_found(), "{e}");
}

#[test]
fn sysctl_enable_announcements_sets_arp_and_ndisc_notify_on_a_netns_link() {
    let mut t = TestNs::new();
    t.h.create_bridge("brx").unwrap();
    sysctl::enable_announcements(&t.ns, "brx").expect("announce");
    assert_eq!(sysctl::get(&t.ns, "net/ipv4/conf/brx/arp_notify").unwrap(), "1");
    assert_eq!(sysctl::get(&t.ns, "net/ipv6/conf/brx/ndisc_notify").unwrap(), "1");
}
