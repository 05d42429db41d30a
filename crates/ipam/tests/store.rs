//! FileStore tests: idempotency, release, rollback, exhaustion, static requests, GC, crash
//! safety and concurrency across threads and processes.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use netattach_ipam::{
    AllocationRequest, ErrorKind, FileStore, GcRequest, IpRange, IpamError, Owner, Store, pool_name,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn range(s: &str) -> IpRange {
    IpRange::parse(s, None, None, &[], None).unwrap()
}

fn owner(c: &str, pod: Option<&str>, ifname: &str) -> Owner {
    Owner::new(c, pod.map(str::to_string), ifname)
}

fn req(o: Owner, ranges: &[IpRange]) -> AllocationRequest {
    AllocationRequest::new(o, ranges.to_vec(), None)
}

fn store() -> (tempfile::TempDir, FileStore) {
    let t = tempfile::tempdir().unwrap();
    let s = FileStore::new(t.path().join("ipam")).unwrap();
    (t, s)
}

#[test]
fn creates_dir_0700() {
    use std::os::unix::fs::PermissionsExt;
    let (_t, s) = store();
    let mode = std::fs::metadata(s.dir()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn idempotent_per_podref_and_ifname() {
    let (_t, s) = store();
    let r = [range("192.168.4.0/24")];
    let a = s.allocate(&req(owner("c1", Some("ns/p"), "net1"), &r)).unwrap();
    assert_eq!(a[0].ip, ip("192.168.4.1"));
    assert_eq!(a[0].cidr.to_string(), "192.168.4.1/24");
    assert_eq!(a[0].pool, "192.168.4.0-24");
    // Same pod and interface, new sandbox: same address, container id updated.
    let b = s.allocate(&req(owner("c2", Some("ns/p"), "net1"), &r)).unwrap();
    assert_eq!(b[0].ip, a[0].ip);
    assert_eq!(b[0].container_id, "c2");
    assert_eq!(s.allocations().unwrap().len(), 1);
    // Other interface of the same pod: another address.
    let c = s.allocate(&req(owner("c2", Some("ns/p"), "net2"), &r)).unwrap();
    assert_eq!(c[0].ip, ip("192.168.4.2"));
    // A late DEL of the old sandbox frees nothing.
    assert!(s.release(&owner("c1", Some("ns/p"), "net1")).unwrap().is_empty());
    let freed = s.release(&owner("c2", Some("ns/p"), "net1")).unwrap();
    assert_eq!(freed.len(), 1);
    assert_eq!(freed[0].ip, ip("192.168.4.1"));
    assert_eq!(s.check(&owner("c2", Some("ns/p"), "net2")).unwrap().len(), 1);
}

#[test]
fn idempotent_per_container_without_podref() {
    let (_t, s) = store();
    let r = [range("10.0.0.0/24")];
    let a = s.allocate(&req(owner("c1", None, "net1"), &r)).unwrap();
    let b = s.allocate(&req(owner("c1", None, "net1"), &r)).unwrap();
    assert_eq!(a[0].ip, b[0].ip);
    assert_eq!(a[0].podref, None);
    let c = s.allocate(&req(owner("c2", None, "net1"), &r)).unwrap();
    assert_ne!(c[0].ip, a[0].ip);
    assert_eq!(s.allocations().unwrap().len(), 2);
}

#[test]
fn release_twice_and_by_podref() {
    let (_t, s) = store();
    let r = [range("10.0.0.0/24")];
    s.allocate(&req(owner("c1", Some("ns/a"), "net1"), &r)).unwrap();
    s.allocate(&req(owner("c2", Some("ns/b"), "net1"), &r)).unwrap();
    assert_eq!(s.release(&owner("c1", None, "net1")).unwrap().len(), 1);
    assert!(s.release(&owner("c1", None, "net1")).unwrap().is_empty());
    // Wrong interface frees nothing.
    assert!(s.release(&owner("c2", None, "net9")).unwrap().is_empty());
    // Empty container id: by podref + ifname.
    assert_eq!(s.release(&owner("", Some("ns/b"), "net1")).unwrap().len(), 1);
    assert!(s.allocations().unwrap().is_empty());
    // Nothing at all: still fine.
    assert!(s.release(&owner("", None, "net1")).unwrap().is_empty());
}

#[test]
fn dual_stack_all_or_nothing() {
    let (_t, s) = store();
    let v4 = range("10.0.0.0/24");
    let v6 = IpRange::parse("fd00::/120", Some("fd00::5"), Some("fd00::5"), &[], None).unwrap();
    // Take the only v6 address.
    s.allocate(&req(owner("other", None, "net1"), std::slice::from_ref(&v6)))
        .unwrap();
    let before = std::fs::read_to_string(s.dir().join("10.0.0.0-24.json")).ok();
    let e = s
        .allocate(&req(owner("c1", Some("ns/p"), "net1"), &[v4.clone(), v6.clone()]))
        .unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::Exhausted);
    // The v4 pool was not written.
    assert_eq!(
        std::fs::read_to_string(s.dir().join("10.0.0.0-24.json")).ok(),
        before
    );
    assert_eq!(s.allocations().unwrap().len(), 1);
    // With room in both, one address from each.
    s.release(&owner("other", None, "net1")).unwrap();
    let a = s
        .allocate(&req(owner("c1", Some("ns/p"), "net1"), &[v4, v6]))
        .unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!((a[0].ip, a[1].ip), (ip("10.0.0.1"), ip("fd00::5")));
    assert_eq!(a[1].pool, "fd00---120");
}

#[test]
fn exhaustion_message() {
    let (_t, s) = store();
    let r = IpRange::parse("192.168.4.0/24", None, None, &[], Some("192.168.4.1")).unwrap();
    assert_eq!(r.capacity(), 253);
    let mut seen = BTreeSet::new();
    for i in 0..253 {
        let mut rq = req(owner(&format!("c{i}"), None, "net1"), std::slice::from_ref(&r));
        rq.overlapping_ranges = false;
        let a = s.allocate(&rq).unwrap();
        assert_ne!(a[0].ip, ip("192.168.4.1"));
        assert_eq!(a[0].gateway, Some(ip("192.168.4.1")));
        assert!(seen.insert(a[0].ip));
    }
    let e = s.allocate(&req(owner("late", None, "net1"), &[r])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pool `192.168.4.0-24` (192.168.4.0/24) is exhausted: 253 allocatable addresses, 253 held; fix: widen \
         the range, or find leaked allocations with `netattach ipam show 192.168.4.0-24` and free them with \
         `netattach ipam release 192.168.4.0-24 IP`"
    );
}

#[test]
fn static_requests() {
    let (_t, s) = store();
    let r = IpRange::parse(
        "10.0.0.0/24",
        Some("10.0.0.100"),
        None,
        &["10.0.0.0/28".into()],
        Some("10.0.0.1"),
    )
    .unwrap();
    let mut rq = req(owner("c1", Some("ns/a"), "net1"), std::slice::from_ref(&r));
    rq.requested = vec![ip("10.0.0.5")];
    let a = s.allocate(&rq).unwrap();
    assert_eq!(
        a[0].ip,
        ip("10.0.0.5"),
        "excluded addresses can be requested explicitly"
    );
    // Idempotent.
    assert_eq!(s.allocate(&rq).unwrap()[0].ip, ip("10.0.0.5"));
    // Someone else asking for it: conflict naming the address and holder.
    let mut other = req(owner("c2", Some("ns/b"), "net1"), std::slice::from_ref(&r));
    other.requested = vec![ip("10.0.0.5")];
    let e = s.allocate(&other).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("10.0.0.5") && m.contains("pod ns/a") && m.contains("container c1"),
        "{m}"
    );
    assert_eq!(e.kind(), ErrorKind::TryAgain);
    // Out of every range.
    other.requested = vec![ip("10.9.0.5")];
    let e = s.allocate(&other).unwrap_err();
    assert!(matches!(e, IpamError::RequestedOutOfRange { .. }), "{e}");
    assert!(
        e.to_string().contains("10.9.0.5") && e.to_string().contains("10.0.0.0/24"),
        "{e}"
    );
    // Gateway, network and broadcast are refused.
    for (x, why) in [
        ("10.0.0.1", "gateway"),
        ("10.0.0.0", "network"),
        ("10.0.0.255", "broadcast"),
    ] {
        other.requested = vec![ip(x)];
        let e = s.allocate(&other).unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
    }
    // Owner asking for a different address than it holds.
    rq.requested = vec![ip("10.0.0.6")];
    let e = s.allocate(&rq).unwrap_err();
    assert!(matches!(e, IpamError::OwnerHoldsOther { .. }), "{e}");
    // A dynamic allocation starts at range_start.
    let d = s
        .allocate(&req(owner("c3", None, "net1"), std::slice::from_ref(&r)))
        .unwrap();
    assert_eq!(d[0].ip, ip("10.0.0.100"));
}

#[test]
fn gc_releases_invalid_attachments() {
    let (_t, s) = store();
    let r = [range("10.0.0.0/24")];
    let other = [range("10.1.0.0/24")];
    for c in ["c1", "c2", "c3"] {
        s.allocate(&req(owner(c, None, "net1"), &r)).unwrap();
    }
    s.allocate(&req(owner("c4", None, "net1"), &other)).unwrap();
    let valid = vec![("c2".to_string(), "net1".to_string())];
    // Grace keeps young allocations.
    let kept = s
        .gc(&GcRequest {
            valid: &valid,
            network_name: None,
            ranges: &r,
            min_age_secs: 3600,
        })
        .unwrap();
    assert!(kept.is_empty());
    let freed = s
        .gc(&GcRequest {
            valid: &valid,
            network_name: None,
            ranges: &r,
            min_age_secs: 0,
        })
        .unwrap();
    let ids: BTreeSet<String> = freed.iter().map(|a| a.container_id.clone()).collect();
    assert_eq!(ids, ["c1".to_string(), "c3".to_string()].into());
    // Pools of other configs are untouched.
    let left: BTreeSet<String> = s
        .allocations()
        .unwrap()
        .into_iter()
        .map(|a| a.container_id)
        .collect();
    assert_eq!(left, ["c2".to_string(), "c4".to_string()].into());
}

#[test]
fn overlapping_ranges_and_network_names() {
    let (_t, s) = store();
    let big = range("10.0.0.0/24");
    let small = range("10.0.0.0/25");
    s.allocate(&req(owner("c1", None, "net1"), std::slice::from_ref(&big)))
        .unwrap();
    let a = s
        .allocate(&req(owner("c2", None, "net1"), std::slice::from_ref(&small)))
        .unwrap();
    assert_eq!(
        a[0].ip,
        ip("10.0.0.2"),
        "overlap detection skips .1 held in the /24 pool"
    );
    let mut no_overlap = req(owner("c3", None, "net1"), std::slice::from_ref(&small));
    no_overlap.overlapping_ranges = false;
    assert_eq!(s.allocate(&no_overlap).unwrap()[0].ip, ip("10.0.0.1"));
    // Another network name is another address space.
    let named = AllocationRequest::new(
        owner("c4", None, "net1"),
        vec![big.clone()],
        Some("storage".into()),
    );
    let n = s.allocate(&named).unwrap();
    assert_eq!(n[0].ip, ip("10.0.0.1"));
    assert_eq!(n[0].pool, "storage-10.0.0.0-24");
    assert!(s.dir().join("storage-10.0.0.0-24.json").exists());
}

fn assert_clean_dir(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name == ".lock" {
            continue;
        }
        assert!(
            name.ends_with(".json") && !name.starts_with('.'),
            "stray file {name}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(&name)).unwrap()).unwrap();
        assert!(v["range"].is_string());
        assert!(v["allocations"].is_object());
    }
}

#[test]
fn file_shape_and_no_temp_files() {
    let (_t, s) = store();
    let r = [range("192.168.4.0/24"), range("caa5::/64")];
    s.allocate(&req(owner("abc", Some("longhorn-system/im-1"), "lhnet1"), &r))
        .unwrap();
    s.allocate(&req(owner("def", None, "lhnet1"), &r)).unwrap();
    s.release(&owner("def", None, "lhnet1")).unwrap();
    assert_clean_dir(s.dir());
    let text = std::fs::read_to_string(s.dir().join("192.168.4.0-24.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["range"], "192.168.4.0/24");
    assert_eq!(v["allocations"]["1"]["id"], "abc");
    assert_eq!(v["allocations"]["1"]["podref"], "longhorn-system/im-1");
    assert_eq!(v["allocations"]["1"]["ifname"], "lhnet1");
    assert!(v["allocations"]["1"]["time"].as_u64().unwrap() > 1_600_000_000);
    assert!(text.contains("\n  \"range\""), "pretty-printed");
    assert!(s.dir().join("caa5---64.json").exists());
    assert_eq!(pool_name(None, &r[1].cidr), "caa5---64");
}

#[test]
fn stale_temp_file_is_harmless() {
    let (_t, s) = store();
    // A crash between write and rename leaves a temp file; the next write replaces it.
    std::fs::write(s.dir().join(".10.0.0.0-24.json.tmp"), "{garbage").unwrap();
    s.allocate(&req(owner("c1", None, "net1"), &[range("10.0.0.0/24")]))
        .unwrap();
    assert_clean_dir(s.dir());
}

#[test]
fn corrupt_pool_is_an_error_never_reset() {
    let (_t, s) = store();
    let path = s.dir().join("10.0.0.0-24.json");
    std::fs::write(&path, "{\"range\": \"10.0.0.0/24\", \"allocations\": {\"x\": {}}").unwrap();
    let e = s
        .allocate(&req(owner("c1", None, "net1"), &[range("10.0.0.0/24")]))
        .unwrap_err();
    assert!(matches!(e, IpamError::Corrupt { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::Internal);
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"range\": \"10.0.0.0/24\", \"allocations\": {\"x\": {}}"
    );
    std::fs::write(
        &path,
        "{\"range\": \"10.0.0.0/24\", \"allocations\": {\"999\": {\"id\": \"x\"}}}",
    )
    .unwrap();
    let e = s.allocations().unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");
}

#[test]
fn reads_whereabouts_ippool_spec() {
    // A spec copied from a whereabouts IPPool (no `time`, no `network_name`) is understood.
    let (_t, s) = store();
    std::fs::write(
        s.dir().join("192.168.4.0-24.json"),
        r#"{"range": "192.168.4.0/24", "allocations": {"1": {"id": "old", "podref": "ns/p", "ifname": "net1"}}}"#,
    )
    .unwrap();
    let a = s
        .allocate(&req(
            owner("new", Some("ns/p"), "net1"),
            &[range("192.168.4.0/24")],
        ))
        .unwrap();
    assert_eq!(a[0].ip, ip("192.168.4.1"));
    assert_eq!(a[0].allocated_at, 0);
    let b = s
        .allocate(&req(owner("x", Some("ns/q"), "net1"), &[range("192.168.4.0/24")]))
        .unwrap();
    assert_eq!(b[0].ip, ip("192.168.4.2"));
}

#[test]
fn fifty_threads_fifty_addresses() {
    let (_t, s) = store();
    let dir = s.dir().to_path_buf();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let s = FileStore::new(dir).unwrap();
                let a = s
                    .allocate(&req(
                        owner(&format!("t{i}"), None, "net1"),
                        &[range("10.0.0.0/24")],
                    ))
                    .unwrap();
                a[0].ip
            })
        })
        .collect();
    let ips: BTreeSet<IpAddr> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(ips.len(), 50);
    assert_eq!(s.allocations().unwrap().len(), 50);
    assert_clean_dir(&dir);
}

const CHILD_DIR: &str = "NETATTACH_IPAM_TEST_CHILD_DIR";
const CHILD_ID: &str = "NETATTACH_IPAM_TEST_CHILD_ID";

/// Child side of `fifty_processes_fifty_addresses`; a no-op unless run by it.
#[test]
fn child_allocator() {
    let (Ok(dir), Ok(id)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_ID)) else {
        return;
    };
    let s = FileStore::new(dir).unwrap();
    let threads: Vec<_> = (0..5)
        .map(|t| {
            let s = s.clone();
            let id = id.clone();
            std::thread::spawn(move || {
                let a = s
                    .allocate(&req(
                        owner(&format!("p{id}-{t}"), None, "net1"),
                        &[range("10.0.0.0/24")],
                    ))
                    .unwrap();
                println!("ALLOCATED {}", a[0].ip);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn fifty_processes_fifty_addresses() {
    let (_t, s) = store();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..10)
        .map(|i| {
            std::process::Command::new(&exe)
                .args(["--exact", "child_allocator", "--nocapture", "--test-threads=1"])
                .env(CHILD_DIR, s.dir())
                .env(CHILD_ID, i.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ips = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        // The harness may print "test child_allocator ... " on the same line.
        ips.extend(
            text.lines()
                .filter_map(|l| l.split_once("ALLOCATED "))
                .map(|(_, x)| ip(x.trim())),
        );
    }
    assert_eq!(ips.len(), 50);
    let distinct: BTreeSet<IpAddr> = ips.into_iter().collect();
    assert_eq!(distinct.len(), 50);
    let stored: BTreeSet<IpAddr> = s.allocations().unwrap().into_iter().map(|a| a.ip).collect();
    assert_eq!(stored, distinct);
    assert_clean_dir(s.dir());
}

#[test]
fn unsafe_network_name_is_refused() {
    let (_t, s) = store();
    let rq = AllocationRequest::new(
        owner("c1", None, "net1"),
        vec![range("10.0.0.0/24")],
        Some("../etc".into()),
    );
    let e = s.allocate(&rq).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("ipam.network_name"), "{e}");
}

#[test]
fn copied_named_ippool_keeps_its_network_for_overlap() {
    let (_t, s) = store();
    std::fs::write(
        s.dir().join("storage-10.0.0.0-24.json"),
        r#"{"range": "10.0.0.0/24", "allocations": {"1": {"id": "old", "podref": "ns/p", "ifname": "net1"}}}"#,
    )
    .unwrap();
    let rq = AllocationRequest::new(
        owner("c1", None, "net1"),
        vec![range("10.0.0.0/25")],
        Some("storage".into()),
    );
    assert_eq!(s.allocate(&rq).unwrap()[0].ip, ip("10.0.0.2"));
}
