//! A real container runtime drives netattach: podman 4.3 with its CNI backend starts two
//! containers on a `macvlan` + `whereabouts` (local store) network, they ping each other at full
//! MTU, and after `podman rm` no allocation, namespace or link is left behind.
//!
//! # Isolation from the machine's podman
//!
//! * `CONTAINERS_CONF` points at a temp `containers.conf` (when set, podman reads only that
//!   file): CNI backend, plugin dirs = [temp bin dir with netattach installed, /usr/lib/cni],
//!   network config dir = a temp dir holding only our conflist, `tmp_dir` in the temp dir,
//!   `lock_type = "file"` (the default "shm" lock would create `/dev/shm/libpod_lock`),
//!   cgroupfs, runc, file events logger.
//! * `CONTAINERS_STORAGE_CONF` points at a temp `storage.conf`, and `--root`/`--runroot`/
//!   `--storage-driver vfs` are passed too: the image and container storage live in the temp
//!   dir and vfs makes no mounts.
//! * No image at all: a rootfs dir with the static `/bin/busybox` (busybox-static) and its applet
//!   links, run with `podman run --rootfs DIR`. (`podman import` of a tarball works too, but
//!   containers/image then writes its blob-info cache to `/var/lib/containers/cache` for root,
//!   and podman 4.3 has no knob to move it: that would touch global state.)
//! * podman runs inside the test's node namespace via `nsenter --net=` (not `ip netns exec`,
//!   which would remount /sys), so its "host" is the node namespace holding master `stor0`.
//!
//! One piece of global state podman 4.3's CNI backend cannot be steered away from: libcni's
//! result cache in `/var/lib/cni/results/<network>-<container id>-<ifname>`. libcni deletes
//! those files on DEL; the test asserts they are gone and removes them (and the directories, if
//! this test created them) on failure.
//!
//! Container limits: podman asks runc for RLIMIT_NOFILE/NPROC of 1048576/4194304 by default,
//! which needs CAP_SYS_RESOURCE (missing in some CI sandboxes: "error setting rlimit type 7:
//! operation not permitted"). `default_ulimits` sets both to 1024, which any root can do.

mod support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;
use support::{MASTER, Topology, assert_safe_address, bin_dir, require_root};

const NETWORK: &str = "nastorage";
const RANGE: &str = "198.18.6.0/24";
const CNI_CACHE: &str = "/var/lib/cni";

/// Panics with the Debian package to install when `exe` is not on PATH (or not at `path`).
fn require_tool(exe: &str, package: &str) -> PathBuf {
    let found = if exe.starts_with('/') {
        Some(PathBuf::from(exe)).filter(|p| p.exists())
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .chain([
                    "/usr/sbin".into(),
                    "/usr/bin".into(),
                    "/sbin".into(),
                    "/bin".into(),
                ])
                .map(|d| d.join(exe))
                .find(|p| p.is_file())
        })
    };
    found.unwrap_or_else(|| {
        panic!("`{exe}` is required by this test and was not found; fix: apt-get install {package}")
    })
}

/// The static busybox from busybox-static (a dynamic one would not run in the bare rootfs).
fn static_busybox() -> PathBuf {
    let p = require_tool("busybox", "busybox-static");
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    assert!(
        is_static_elf64(&bytes),
        "{} is dynamically linked, so it cannot run in the bare test image; fix: apt-get install busybox-static",
        p.display()
    );
    p
}

/// A 64-bit little-endian ELF without a `PT_INTERP` program header (no dynamic loader).
fn is_static_elf64(b: &[u8]) -> bool {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]) as usize);
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(|a: [u8; 8]| u64::from_le_bytes(a) as usize)
    };
    if b.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        b.get(o..o + 4)
            .is_some_and(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) != PT_INTERP)
    })
}

/// Everything podman needs, in one temp dir; Drop removes containers, mounts, cache files and
/// the dir (also when an assertion failed).
struct Podman {
    /// Kept first so it is dropped last (after `Drop::drop` ran).
    dir: tempfile::TempDir,
    node_ns: PathBuf,
    containers: Vec<String>,
    cache_existed: bool,
}

impl Podman {
    fn new(node_ns: &Path, local_dir: &Path) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("netattach-podman-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        for sub in ["conf", "root", "runroot", "tmp", "rootfs/bin"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        let bin = bin_dir();
        std::fs::write(
            d.join("containers.conf"),
            format!(
                r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}", "/usr/lib/cni"]
network_config_dir = "{conf}"

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
lock_type = "file"
tmp_dir = "{tmp}"
"#,
                bin = bin.display(),
                conf = d.join("conf").display(),
                tmp = d.join("tmp").display(),
            ),
        )
        .expect("write containers.conf");
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("root").display(),
                d.join("runroot").display()
            ),
        )
        .expect("write storage.conf");
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{
                "type": "macvlan",
                "master": MASTER,
                "mode": "bridge",
                "ipam": {
                    "type": "whereabouts",
                    "range": RANGE,
                    "datastore": "local",
                    "local_dir": local_dir.display().to_string(),
                },
            }],
        });
        std::fs::write(
            d.join("conf").join(format!("{NETWORK}.conflist")),
            serde_json::to_vec_pretty(&conflist).expect("json"),
        )
        .expect("write conflist");
        Podman {
            dir,
            node_ns: node_ns.to_path_buf(),
            containers: Vec::new(),
            cache_existed: Path::new(CNI_CACHE).exists(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.node_ns.display()))
            .arg("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env_remove("CONTAINER_HOST")
            .env_remove("CONTAINER_CONNECTION");
        cmd
    }

    fn try_run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("spawn nsenter podman {args:?}: {e}"))
    }

    /// Runs podman and returns stdout; panics with stdout+stderr on failure.
    #[track_caller]
    fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Builds the busybox rootfs the containers run from.
    fn build_rootfs(&self) {
        let rootfs = self.dir.path().join("rootfs");
        std::fs::copy(static_busybox(), rootfs.join("bin/busybox")).expect("copy busybox");
        for applet in ["sh", "ping", "ip", "sleep", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("symlink");
        }
    }

    fn start(&mut self, name: &str) -> String {
        let rootfs = self.dir.path().join("rootfs").display().to_string();
        self.containers.push(name.to_string());
        let id = self
            .run(&[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                NETWORK,
                "--rootfs",
                &rootfs,
                "sleep",
                "300",
            ])
            .trim()
            .to_string();
        assert!(id.len() == 64, "podman run printed no container id: {id:?}");
        id
    }

    fn remove(&mut self, name: &str) {
        self.run(&["rm", "-f", "-t", "0", name]);
        self.containers.retain(|c| c != name);
    }

    /// eth0's IPv4 address and prefix as the container itself sees it.
    fn container_addr(&self, name: &str) -> (Ipv4Addr, u8) {
        let out = self.run(&["exec", name, "ip", "-4", "addr", "show", "eth0"]);
        let cidr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap_or_else(|| panic!("no inet address on eth0 in {name}:\n{out}"));
        assert_safe_address(cidr);
        let (ip, len) = cidr.split_once('/').expect("addr/prefix");
        (ip.parse().expect("ipv4"), len.parse().expect("prefix"))
    }

    fn cache_files(&self, ids: &[String]) -> Vec<PathBuf> {
        ids.iter()
            .map(|id| {
                Path::new(CNI_CACHE)
                    .join("results")
                    .join(format!("{NETWORK}-{id}-eth0"))
            })
            .filter(|p| p.exists())
            .collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in self.containers.clone() {
            let _ = self.try_run(&["rm", "-f", "-t", "0", &c]);
        }
        // Defensive: vfs makes no mounts, but never leave one under the temp dir.
        let root = self.dir.path().display().to_string();
        if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut mounts: Vec<&str> = info
                .lines()
                .filter_map(|l| l.split_whitespace().nth(4))
                .filter(|m| m.starts_with(&root))
                .collect();
            mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in mounts {
                if let Ok(c) = std::ffi::CString::new(m) {
                    // SAFETY: a valid NUL-terminated path; MNT_DETACH has no other inputs.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
        if !self.cache_existed {
            // Only directories this test caused to exist, and only if nothing else is in them.
            let _ = std::fs::remove_dir(Path::new(CNI_CACHE).join("results"));
            let _ = std::fs::remove_dir(CNI_CACHE);
        }
    }
}

fn named_netns() -> BTreeSet<String> {
    netattach_netdev::list_named_netns()
        .expect("list /run/netns")
        .into_iter()
        .collect()
}

#[test]
fn podman_runs_two_containers_on_a_netattach_network() {
    require_root();
    require_tool("podman", "podman");
    require_tool("runc", "runc");
    require_tool("nsenter", "util-linux");
    static_busybox();
    let before = named_netns();
    let shm_lock_existed = Path::new("/dev/shm/libpod_lock").exists();

    let topo = Topology::new();
    let mut pm = Podman::new(topo.node.path(), topo.local_dir());

    // podman must see our conflist (4.3 ignores files it cannot parse, silently).
    let nets = pm.run(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(
        nets.lines().any(|l| l.starts_with(&format!("{NETWORK} "))),
        "podman network ls does not list {NETWORK}:\n{nets}"
    );
    pm.build_rootfs();

    let tag = std::process::id();
    let (n1, n2) = (format!("nat-{tag}-c1"), format!("nat-{tag}-c2"));
    let ids = vec![pm.start(&n1), pm.start(&n2)];

    let sandboxes: Vec<String> = [&n1, &n2]
        .iter()
        .map(|n| {
            pm.run(&["inspect", "--format", "{{.NetworkSettings.SandboxKey}}", n])
                .trim()
                .to_string()
        })
        .collect();
    for s in &sandboxes {
        assert!(s.starts_with("/run/netns/"), "unexpected sandbox {s:?}");
    }
    let (ip1, len1) = pm.container_addr(&n1);
    let (ip2, len2) = pm.container_addr(&n2);
    assert_ne!(ip1, ip2, "two containers got the same address");
    assert_eq!((len1, len2), (24, 24), "prefix length of {RANGE}");

    // The store holds exactly these two, owned by the two containers.
    let allocs = topo.allocations();
    assert_eq!(allocs.len(), 2, "allocations while running: {allocs:?}");
    let text = format!("{allocs:?}");
    for (id, ip) in ids.iter().zip([ip1, ip2]) {
        assert!(text.contains(id.as_str()), "no allocation owned by {id}: {text}");
        assert!(text.contains(&ip.to_string()), "no allocation of {ip}: {text}");
    }

    // Full MTU: 1472 + 8 (ICMP) + 20 (IP) = 1500. busybox ping has no -M do, so DF is not
    // forced; between two macvlans on one master nothing fragments anyway.
    for (from, to) in [(&n1, ip2), (&n2, ip1)] {
        let out = pm.run(&[
            "exec",
            from,
            "ping",
            "-c",
            "3",
            "-W",
            "2",
            "-s",
            "1472",
            &to.to_string(),
        ]);
        assert!(out.contains("3 packets received"), "ping {from} -> {to}:\n{out}");
    }

    pm.remove(&n1);
    pm.remove(&n2);

    let allocs = topo.allocations();
    assert!(allocs.is_empty(), "allocations left after podman rm: {allocs:?}");
    let left = pm.cache_files(&ids);
    for f in &left {
        let _ = std::fs::remove_file(f);
    }
    assert!(
        left.is_empty(),
        "libcni cache files left after podman rm: {left:?}"
    );
    let node_links = topo.node.link_names();
    assert_eq!(
        node_links,
        vec![MASTER.to_string()],
        "links left in the node namespace"
    );
    // podman's own netns-<uuid> entries are gone; ours go when `topo` drops. (Other
    // namespaces may come and go meanwhile: tests of other processes run in parallel.)
    let left: Vec<&String> = sandboxes
        .iter()
        .filter(|p| Path::new(p.as_str()).exists())
        .collect();
    assert!(
        left.is_empty(),
        "podman sandbox namespaces left after podman rm: {left:?}"
    );
    let mine = format!("nat-{}-", std::process::id());
    let ours = [topo.node.name().to_string(), topo.switch.name().to_string()];
    let leftover: Vec<String> = named_netns()
        .difference(&before)
        .filter(|n| n.starts_with(&mine) && !ours.contains(*n))
        .cloned()
        .collect();
    assert!(leftover.is_empty(), "namespaces of this test left: {leftover:?}");
    assert!(
        shm_lock_existed || !Path::new("/dev/shm/libpod_lock").exists(),
        "podman created /dev/shm/libpod_lock despite lock_type=file"
    );
}
