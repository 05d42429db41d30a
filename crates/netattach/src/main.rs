//! The netattach multi-call binary: argument parsing and dispatch only.
//!
//! Invoked as `macvlan` or `whereabouts` (the names `netattach install` links it under) it is
//! that CNI plugin. Invoked as `netattach` with `CNI_COMMAND` set it is the meta-plugin;
//! otherwise it is the command-line tool.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// netattach: secondary pod networks (macvlan + cluster-wide IPAM) for Kubernetes, with a lab
/// that proves the network works before anything depends on it.
#[derive(Parser, Debug)]
#[command(
    name = "netattach",
    version,
    about,
    after_help = "As a CNI plugin: `netattach install --bin-dir DIR` links this binary as DIR/macvlan and \
                  DIR/whereabouts; invoked under those names with CNI_COMMAND set it speaks the CNI protocol \
                  (stdin config, CNI_* environment, result or error on stdout). Logs go to stderr; set \
                  NETATTACH_LOG=debug for more."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build a whole cluster in network namespaces (a LAN switch, nodes with a storage NIC,
    /// pods), attach every pod with the real plugins, validate addresses and full-MTU
    /// reachability, detach, and prove nothing leaked. Needs root. Prints PASS or FAIL last.
    Lab(LabArgs),
    /// Install this binary into a CNI bin dir as netattach, macvlan and whereabouts,
    /// atomically (temp file + rename: running plugins never see a half-written file).
    Install {
        /// The CNI bin dir, e.g. /opt/cni/bin or K3s's /var/lib/rancher/k3s/data/cni.
        #[arg(long)]
        bin_dir: PathBuf,
        /// Print the steps without doing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Inspect and repair IPAM allocations, in the cluster's whereabouts IPPools (--kubeconfig)
    /// or the local store (--local-dir): ls, show, release.
    Ipam {
        #[command(subcommand)]
        command: IpamCmd,
    },
    /// Run the node daemon (one per node): watch caches of this node's pods and all NADs, the
    /// root-only unix socket the shims ask, network-status publishing, /metrics. Stops on
    /// SIGTERM or SIGINT.
    Daemon(netattach_daemon::DaemonArgs),
}

#[derive(Args, Debug)]
struct LabArgs {
    #[command(subcommand)]
    action: Option<LabAction>,
    /// Number of node namespaces.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Pod namespaces per node.
    #[arg(long, default_value_t = 2)]
    pods_per_node: usize,
    /// The storage network range handed to whereabouts IPAM.
    #[arg(long, default_value = "192.168.4.0/24")]
    range: String,
    /// macvlan mode: bridge, private, vepa or passthru.
    #[arg(long, default_value = "bridge")]
    mode: String,
    /// MTU of the storage LAN (switch, node NICs and pod interfaces).
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Leave the lab running after validation (tear it down later with `netattach lab down`).
    #[arg(long)]
    keep: bool,
    /// Run against this API server: the NAD and the pods are API objects, one `netattach
    /// daemon` per lab node answers the meta-plugin, network-status is read from the pods.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum LabAction {
    /// Remove a lab left running with --keep (or by a crash).
    Down,
}

/// Which IPAM store an `ipam` command works on.
#[derive(Args, Debug)]
struct IpamStoreArgs {
    /// Work on the cluster this kubeconfig reaches: its whereabouts IPPools (unless --local-dir
    /// is given too) and its pods (node, whether they still exist). Without it: the local store.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The namespace of the IPPools (default: the kubeconfig context's, else kube-system, as
    /// whereabouts). Needs --kubeconfig.
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// The local file store (`local_dir` of `"datastore": "local"`; default
    /// /var/lib/netattach/ipam). With --kubeconfig, pods are still looked up in the cluster.
    #[arg(long, value_name = "DIR")]
    local_dir: Option<PathBuf>,
}

impl IpamStoreArgs {
    fn selection(self) -> netattach_plugins::ipam_admin::StoreSelection {
        netattach_plugins::ipam_admin::StoreSelection {
            kubeconfig: self.kubeconfig,
            namespace: self.namespace,
            local_dir: self.local_dir,
        }
    }
}

#[derive(Subcommand, Debug)]
enum IpamCmd {
    /// List every allocation: pool, IP, pod, interface, container id, node and age.
    ///
    /// The node is the pod's spec.nodeName (`gone` when the pod no longer exists, `-` when
    /// unknown); the age is the allocation time when the store recorded it, else the creation of
    /// the address's OverlappingRangeIPReservation, else the pod's creation, else `-`.
    Ls {
        #[command(flatten)]
        store: IpamStoreArgs,
        /// Print JSON (an array of objects; unknown facts are null) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one pool: its range, size, used and free addresses, then its allocations.
    ///
    /// The allocations have the columns of `ls`. The size counts the addresses the allocator can
    /// hand out in the pool's CIDR (network and broadcast excluded).
    Show {
        /// The pool name, e.g. storage-192.168.4.0-24 (`ls` lists them).
        pool: String,
        #[command(flatten)]
        store: IpamStoreArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Free an address by hand: `release POOL IP`, or a pod's with `--pod NS/NAME`.
    ///
    /// `--pod NS/NAME [--interface IF] [POOL]` frees every address the pod holds (on that
    /// interface, in that pool). Refused while the holding pod exists and is not
    /// terminating (or when its holder cannot be checked), naming the pod: use --force to free
    /// it anyway. The write only frees the address while it is still held as listed, and
    /// deletes its OverlappingRangeIPReservation when that names the freed attachment.
    Release {
        /// The pool the address belongs to (with --pod: only this pool).
        #[arg(required_unless_present = "pod")]
        pool: Option<String>,
        /// The address to free.
        #[arg(required_unless_present = "pod", conflicts_with = "pod")]
        ip: Option<std::net::IpAddr>,
        /// Free the addresses of this pod (namespace/name) instead of one address.
        #[arg(long, value_name = "NS/NAME")]
        pod: Option<String>,
        /// With --pod: only the address on this interface.
        #[arg(long, value_name = "IF", requires = "pod", conflicts_with = "ip")]
        interface: Option<String>,
        /// Free the address even though its pod is alive or cannot be checked.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        store: IpamStoreArgs,
    },
}

fn invoked_as() -> String {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(netattach_plugins::logging::ENV_FILTER)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Plugins own stdout for the protocol: logs always go to stderr, colored only on a terminal
    // (a daemon's log file or journal gets plain text).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn main() -> ExitCode {
    let name = invoked_as();
    let cni_call = std::env::var_os("CNI_COMMAND").is_some_and(|c| !c.is_empty());
    // `netattach` (or any other name) with CNI_COMMAND set is the meta-plugin; without it, the CLI.
    let face = match name.as_str() {
        "netattach" if !cni_call => None,
        n => netattach_plugins::plugin_for(n).or_else(|| {
            cni_call
                .then(|| netattach_plugins::plugin_for("netattach"))
                .flatten()
        }),
    };
    if let Some(plugin) = face {
        netattach_plugins::logging::init();
        return exit(netattach_cni::skel::run(plugin.as_ref()));
    }
    let cli = Cli::parse();
    // The daemon logs through a queue (a stalled stderr reader never stalls its requests);
    // everything else writes stderr directly. The guard flushes the queue on return.
    let _log_queue = match &cli.command {
        Cmd::Daemon(_) => netattach_daemon::logging::init("info"),
        _ => {
            init_logging("info");
            None
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netattach: {e}");
            ExitCode::FAILURE
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Cmd::Install { bin_dir, dry_run } => {
            let me = std::env::current_exe()?;
            for step in netattach_plugins::install::install(&me, &bin_dir, dry_run)? {
                println!("{}{step}", if dry_run { "would " } else { "" });
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ipam { command } => {
            use netattach_plugins::ipam_admin;
            let out = match command {
                IpamCmd::Ls { store, json } => {
                    let listing = ipam_admin::ls(&store.selection(), json)?;
                    print!("{}", listing.report);
                    for problem in &listing.unreadable {
                        eprintln!("netattach: {problem}");
                    }
                    for note in &listing.orphaned {
                        eprintln!("netattach: note: {note}");
                    }
                    return Ok(if listing.unreadable.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    });
                }
                IpamCmd::Show { pool, store, json } => ipam_admin::show(&store.selection(), &pool, json)?,
                IpamCmd::Release {
                    pool,
                    ip,
                    pod,
                    interface,
                    force,
                    store,
                } => {
                    let target = match (pod, pool, ip) {
                        (Some(podref), pool, _) => ipam_admin::ReleaseTarget::Pod {
                            podref,
                            ifname: interface,
                            pool,
                        },
                        (None, Some(pool), Some(ip)) => ipam_admin::ReleaseTarget::Address { pool, ip },
                        // clap requires POOL and IP unless --pod is given.
                        (None, _, _) => return Err("release: give POOL and IP, or --pod NS/NAME".into()),
                    };
                    ipam_admin::release(&store.selection(), &target, force)?
                }
            };
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Daemon(args) => {
            netattach_daemon::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Lab(args) => match args.action {
            Some(LabAction::Down) => {
                netattach_lab::down()?;
                Ok(ExitCode::SUCCESS)
            }
            None => {
                let config = netattach_lab::LabConfig {
                    nodes: args.nodes,
                    pods_per_node: args.pods_per_node,
                    range: args.range,
                    mode: args.mode,
                    mtu: args.mtu,
                    keep: args.keep,
                    binary: std::env::current_exe()?,
                    kubeconfig: args.kubeconfig,
                };
                let passed = netattach_lab::run(&config)?;
                Ok(if passed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
        },
    }
}
