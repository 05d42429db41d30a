//! `attach-bench`: ADD+DEL latency and peak RSS of netattach (`macvlan` + `whereabouts`, local
//! store) against the reference plugins (`/usr/lib/cni/macvlan` + `host-local`), interleaved on
//! one topology built in throw-away network namespaces. Needs root. See `bench/README.md`.
//!
//! Network safety: everything lives in namespaces this program creates (`nat-<pid>-<n>`);
//! addresses come only from 198.18.0.0/15; no pre-existing interface is touched. Namespaces and
//! temp dirs are removed by Drop guards on normal exit, on error, on panic and on Ctrl-C.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use netattach_netdev::Handle;
use serde_json::{Value, json};

// Shared with the other benches; not every helper is used here.
#[allow(dead_code)]
mod common;

use common::{Error, INTERRUPTED, Ns, install_faces, percentile, require_file, sweep_stale};

const MASTER: &str = "stor0";
const MASTER_PEER: &str = "stor0p";
const IFNAME: &str = "net1";
const REF_DIR: &str = "/usr/lib/cni";
/// netattach's range and the reference's: both in 198.18.0.0/15, disjoint so the two plugin
/// sets never hand out the same address.
const NA_RANGE: &str = "198.18.8.0/24";
const REF_RANGE: &str = "198.18.9.0/24";

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

struct Opts {
    netattach: PathBuf,
    iterations: usize,
    warmup: usize,
    pods: usize,
}

fn usage() -> &'static str {
    "usage: attach-bench [--netattach PATH] [--iterations N] [--warmup N] [--pods N]\n\
     \n\
     Runs ADD+DEL cycles of netattach (macvlan + whereabouts, local store) and of the reference\n\
     /usr/lib/cni/macvlan + host-local, interleaved, in network namespaces it creates. Needs root.\n\
     Defaults: --netattach <dir of this program>/netattach --iterations 200 --warmup 10 --pods 4"
}

fn parse_args() -> Result<Opts, Error> {
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let mut o = Opts {
        netattach: exe_dir.join("netattach"),
        iterations: 200,
        warmup: 10,
        pods: 4,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{}", usage()))
        };
        match a.as_str() {
            "--netattach" => o.netattach = PathBuf::from(val("--netattach")?),
            "--iterations" => o.iterations = val("--iterations")?.parse()?,
            "--warmup" => o.warmup = val("--warmup")?.parse()?,
            "--pods" => o.pods = val("--pods")?.parse()?,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{}", usage()).into()),
        }
    }
    if o.iterations == 0 || o.pods == 0 {
        return Err("--iterations and --pods must be at least 1".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attach-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One plugin execution, reaped with `wait4` for its rusage.
struct Run {
    elapsed: Duration,
    /// Exit status as `wait4` reports it.
    status: libc::c_int,
    /// `ru_maxrss` in KiB: the peak of the process and of the descendants it waited for.
    maxrss_kib: i64,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Run {
    fn ok(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }
    fn describe(&self) -> String {
        format!(
            "status {:#x}, stdout {}, stderr {}",
            self.status,
            String::from_utf8_lossy(&self.stdout).trim(),
            String::from_utf8_lossy(&self.stderr).trim()
        )
    }
}

/// Runs `exe` with exactly `env` (+ PATH) and `stdin`, from the calling thread (and so in its
/// network namespace), timing spawn to reap.
fn exec(exe: &Path, env: &[(&str, String)], stdin: &[u8]) -> Result<Run, Error> {
    let start = Instant::now();
    let mut child = Command::new(exe)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", exe.display()))?;
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(stdin);
    }
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut so) = child.stdout.take() {
        so.read_to_end(&mut stdout)?;
    }
    if let Some(mut se) = child.stderr.take() {
        se.read_to_end(&mut stderr)?;
    }
    let pid = libc::pid_t::try_from(child.id())?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our unreaped child; both out-pointers are valid for writes. `child` is
    // never waited on by std afterwards (dropping a Child does not wait).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        return Err(format!("wait4({pid}): {}", std::io::Error::last_os_error()).into());
    }
    Ok(Run {
        elapsed: start.elapsed(),
        status,
        maxrss_kib: ru.ru_maxrss,
        stdout,
        stderr,
    })
}

/// One side of the comparison.
struct Side {
    label: &'static str,
    macvlan: PathBuf,
    ipam: PathBuf,
    cni_path: String,
    config: Value,
    add: Vec<Duration>,
    del: Vec<Duration>,
    add_tree_rss: i64,
}

impl Side {
    fn env(&self, cmd: &str, id: &str, netns: &Path, pod: usize) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_NETNS", netns.display().to_string()),
            ("CNI_IFNAME", IFNAME.to_string()),
            ("CNI_PATH", self.cni_path.clone()),
            (
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{pod};K8S_POD_INFRA_CONTAINER_ID={id}"
                ),
            ),
        ]
    }

    /// ADD then DEL of one attachment; returns (ADD, DEL) runs. A failed ADD is undone.
    fn cycle(
        &self,
        exe: &Path,
        config: &Value,
        id: &str,
        netns: &Path,
        pod: usize,
    ) -> Result<(Run, Run), Error> {
        let stdin = serde_json::to_vec(config)?;
        let add = exec(exe, &self.env("ADD", id, netns, pod), &stdin)?;
        if !add.ok() {
            let _ = exec(exe, &self.env("DEL", id, netns, pod), &stdin);
            return Err(format!(
                "{} ADD {id} ({}) failed: {}",
                self.label,
                exe.display(),
                add.describe()
            )
            .into());
        }
        let del = exec(exe, &self.env("DEL", id, netns, pod), &stdin)?;
        if !del.ok() {
            return Err(format!(
                "{} DEL {id} ({}) failed: {}",
                self.label,
                exe.display(),
                del.describe()
            )
            .into());
        }
        Ok((add, del))
    }

    /// Peak RSS over `n` ADDs of `exe` with `config` (each followed by a DEL).
    fn peak_rss(&self, exe: &Path, config: &Value, tag: &str, netns: &Path, n: usize) -> Result<i64, Error> {
        let mut peak = 0;
        for i in 0..n {
            let (add, _) = self.cycle(exe, config, &format!("{tag}-{i}"), netns, 0)?;
            peak = peak.max(add.maxrss_kib);
        }
        Ok(peak)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn run() -> Result<(), Error> {
    let opts = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "must run as root (it creates network namespaces): sudo <target dir>/<host triple>/release/attach-bench".into(),
        );
    }
    require_file(
        &opts.netattach,
        "build it with `scripts/build-release -p netattach -p netattach-bench`, or pass --netattach PATH",
    )?;
    for p in ["macvlan", "host-local"] {
        require_file(
            &Path::new(REF_DIR).join(p),
            "apt-get install containernetworking-plugins",
        )?;
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_sigint as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
        );
    }

    let tmp = tempfile::Builder::new().prefix("attach-bench-").tempdir()?;
    let bin = tmp.path().join("bin");
    install_faces(&opts.netattach, &bin)?;
    let store = tmp.path().join("store");
    let hl_dir = tmp.path().join("host-local");

    sweep_stale("nat");
    let node = Ns::new("nat")?;
    let switch = Ns::new("nat")?;
    {
        let mut h = Handle::in_netns(&node.netns()?)?;
        h.create_veth(MASTER, MASTER_PEER, Some(&switch.netns()?))?;
        let i = h.link_index(MASTER)?;
        h.set_up(i)?;
        let mut hs = Handle::in_netns(&switch.netns()?)?;
        let i = hs.link_index(MASTER_PEER)?;
        hs.set_up(i)?;
    }
    let pods: Vec<Ns> = (0..opts.pods).map(|_| Ns::new("nat")).collect::<Result<_, _>>()?;

    let base = |ipam: Value| json!({"cniVersion": "1.0.0", "name": "bench", "type": "macvlan", "master": MASTER, "mode": "bridge", "ipam": ipam});
    let mut na = Side {
        label: "netattach",
        macvlan: bin.join("macvlan"),
        ipam: bin.join("whereabouts"),
        cni_path: bin.display().to_string(),
        config: base(
            json!({"type": "whereabouts", "range": NA_RANGE, "datastore": "local",
                            "local_dir": store.display().to_string()}),
        ),
        add: Vec::new(),
        del: Vec::new(),
        add_tree_rss: 0,
    };
    let mut rf = Side {
        label: "reference",
        macvlan: Path::new(REF_DIR).join("macvlan"),
        ipam: Path::new(REF_DIR).join("host-local"),
        cni_path: REF_DIR.to_string(),
        config: base(json!({"type": "host-local", "ranges": [[{"subnet": REF_RANGE}]],
                            "dataDir": hl_dir.display().to_string()})),
        add: Vec::new(),
        del: Vec::new(),
        add_tree_rss: 0,
    };

    println!(
        "attach-bench: {} warmup + {} measured ADD+DEL cycles per side, interleaved, {} pod namespaces",
        opts.warmup, opts.iterations, opts.pods
    );
    println!(
        "  netattach: {} (macvlan + whereabouts, local store)",
        opts.netattach.display()
    );
    println!("  reference: {REF_DIR}/macvlan + host-local");

    let pod_paths: Vec<PathBuf> = pods.iter().map(|p| p.path().to_path_buf()).collect();
    let total = opts.warmup + opts.iterations;
    // Every plugin runs from this one thread inside the node namespace: the child processes
    // inherit the thread's namespace, exactly as under a runtime on the node.
    let rss = node.netns()?.run(|| -> Result<[i64; 4], Error> {
        let started = Instant::now();
        for i in 0..total {
            if INTERRUPTED.load(Ordering::SeqCst) {
                return Err("interrupted".into());
            }
            let pod = i % pod_paths.len();
            for side in [&mut na, &mut rf] {
                let id = format!("{}-{i}", &side.label[..3]);
                let (add, del) = side.cycle(
                    &side.macvlan.clone(),
                    &side.config.clone(),
                    &id,
                    &pod_paths[pod],
                    pod,
                )?;
                if i >= opts.warmup {
                    side.add.push(add.elapsed);
                    side.del.push(del.elapsed);
                    side.add_tree_rss = side.add_tree_rss.max(add.maxrss_kib);
                }
            }
            let done = i + 1;
            if done == opts.warmup || (done > opts.warmup && (done - opts.warmup) % 50 == 0) || done == total
            {
                println!(
                    "  [{:>5.1}s] {done}/{total}: ADD p50 {} vs {}, DEL p50 {} vs {}",
                    started.elapsed().as_secs_f64(),
                    ms(percentile(&na.add, 0.5)),
                    ms(percentile(&rf.add, 0.5)),
                    ms(percentile(&na.del, 0.5)),
                    ms(percentile(&rf.del, 0.5)),
                );
            }
        }
        // Peak RSS of each process on its own: macvlan with L2-only config (no IPAM child),
        // and the IPAM plugin run alone with the same network config macvlan hands it.
        let l2 = |s: &Side| {
            let mut c = s.config.clone();
            c["ipam"] = json!({});
            c
        };
        let pod0 = &pod_paths[0];
        Ok([
            na.peak_rss(&na.macvlan, &l2(&na), "na-l2", pod0, 5)?,
            rf.peak_rss(&rf.macvlan, &l2(&rf), "ref-l2", pod0, 5)?,
            na.peak_rss(&na.ipam, &na.config, "na-ipam", pod0, 5)?,
            rf.peak_rss(&rf.ipam, &rf.config, "ref-ipam", pod0, 5)?,
        ])
    })??;

    // Nothing may be left: no links in the pods, no allocations in either store.
    for p in &pods {
        let links = Handle::in_netns(&p.netns()?)?.links()?;
        if links.iter().any(|l| l.name != "lo") {
            return Err(format!("links left in {}: {links:?}", p.path().display()).into());
        }
    }
    let leftover = |dir: &Path, keep: fn(&str) -> bool| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| keep(n))
                    .collect()
            })
            .unwrap_or_default()
    };
    let hl_left = leftover(&hl_dir.join("bench"), |n| n.parse::<std::net::IpAddr>().is_ok());
    let na_pools = leftover(&store, |n| n.ends_with(".json") && !n.starts_with('.'));
    for pool in &na_pools {
        let doc: Value = serde_json::from_slice(&std::fs::read(store.join(pool))?)?;
        if doc["allocations"].as_object().is_some_and(|a| !a.is_empty()) {
            return Err(format!("whereabouts allocations left in {pool}: {}", doc["allocations"]).into());
        }
    }
    if !hl_left.is_empty() {
        return Err(format!("host-local allocations left: {hl_left:?}").into());
    }

    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!();
    println!(
        "{:<6} {:>14} {:>15} {:>7} {:>14} {:>14}",
        "op", "netattach p50", "reference p50", "ratio", "netattach p90", "reference p90"
    );
    for (op, a, b) in [("ADD", &na.add, &rf.add), ("DEL", &na.del, &rf.del)] {
        let (a50, b50) = (percentile(a, 0.5), percentile(b, 0.5));
        println!(
            "{:<6} {:>14} {:>15} {:>7.2} {:>14} {:>14}",
            op,
            ms(a50),
            ms(b50),
            ratio(a50, b50),
            ms(percentile(a, 0.9)),
            ms(percentile(b, 0.9))
        );
    }
    println!(
        "peak RSS (ADD): macvlan {} KiB / {} KiB, IPAM {} KiB / {} KiB",
        rss[0], rss[1], rss[2], rss[3]
    );
    println!(
        "  (netattach / reference; macvlan measured L2-only so it excludes its IPAM child; \
         whole ADD process tree: {} KiB / {} KiB)",
        na.add_tree_rss, rf.add_tree_rss
    );
    drop(pods);
    drop(switch);
    drop(node);
    Ok(())
}
