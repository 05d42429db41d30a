//! The node daemon as a real process against the real kube-apiserver of `tools/testenv`.
//!
//! Each test starts the daemon in a child process (this test binary re-executed into
//! [`daemon_child_process`], which parses the same `DaemonArgs` as `netattach daemon` and calls
//! `netattach_daemon::run`), with its socket and readiness file in a private temp dir, its
//! metrics on a free loopback port, and the restricted node identity of `tools/testenv`
//! (ClusterRole `netattach-node`) unless the test is about tokens. Then it talks to the socket
//! exactly as the shim does (`netattach_cluster::daemon_api`).
//!
//! Run: `tools/test-k8s env CARGO_TARGET_DIR=target/daemon cargo test -p netattach-daemon`.
//! Without a test cluster every test fails with the command to run (netattach-testenv).

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use netattach_cluster::annotation::{
    DEFAULT_NETWORK_ANNOTATION, NETWORK_STATUS_ANNOTATION, NETWORKS_ANNOTATION,
};
use netattach_cluster::daemon_api::{NadKey, Request, Response, read_message, write_message};
use netattach_cluster::status::{NetworkStatus, to_annotation};
use netattach_daemon::nad::{NetworkAttachmentDefinition, NetworkAttachmentDefinitionSpec};
use serde_json::json;

mod support;
use support::{DaemonProcess, ensure_nodes};

/// Set (to a JSON array of flags) when this binary is the daemon child.
const CHILD_ENV: &str = "NETATTACH_DAEMON_TEST_CHILD";
/// The simulated node the daemons run on, and another one.
const NODE: &str = "node-1";
const OTHER_NODE: &str = "node-2";
const WAIT: Duration = Duration::from_secs(30);

#[test]
#[ignore = "helper: the daemon process the other tests start (runs only with NETATTACH_DAEMON_TEST_CHILD)"]
fn daemon_child_process() {
    support::daemon_child_main(CHILD_ENV);
}

/// A daemon process and its files.
struct Daemon {
    process: DaemonProcess,
    dir: tempfile::TempDir,
    socket: PathBuf,
    ready: PathBuf,
}

impl std::ops::Deref for Daemon {
    type Target = DaemonProcess;
    fn deref(&self) -> &DaemonProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut DaemonProcess {
        &mut self.process
    }
}

/// The flags of a daemon for `NODE` with `kubeconfig`, its socket and readiness file in `dir`
/// (both returned too), its metrics on a loopback port it picks, and `extra`.
fn daemon_flags(kubeconfig: &Path, dir: &Path, extra: &[&str]) -> (Vec<String>, PathBuf, PathBuf) {
    let socket = dir.join("run").join("daemon.sock");
    let ready = dir.join("ready");
    let mut flags: Vec<String> = vec![
        "--node".into(),
        NODE.into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--socket".into(),
        socket.display().to_string(),
        "--ready-file".into(),
        ready.display().to_string(),
        "--metrics-addr".into(),
        "127.0.0.1:0".into(),
    ];
    flags.extend(extra.iter().map(|s| s.to_string()));
    (flags, socket, ready)
}

/// `GET path` from a daemon's metrics address.
fn http_get_at(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// The value of the unlabelled series `name` in a `/metrics` text.
fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .map(str::to_string)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not found in\n{text}"))
}

impl Daemon {
    /// Starts a daemon for `NODE` with `kubeconfig` and extra flags.
    fn start(kubeconfig: &Path, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let (flags, socket, ready) = daemon_flags(kubeconfig, dir.path(), extra);
        Daemon {
            process: DaemonProcess::spawn(CHILD_ENV, flags, &dir.path().join("daemon.log"), WAIT),
            dir,
            socket,
            ready,
        }
    }

    /// Waits for the readiness file of this process (a killed predecessor leaves a stale one,
    /// which the new process removes first).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        let mine = format!("pid={}\n", self.pid());
        while !std::fs::read_to_string(&self.ready).is_ok_and(|t| t.contains(&mine)) {
            if let Some(status) = self.exited() {
                panic!(
                    "the daemon exited with {status} before it was ready:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon was not ready within {WAIT:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn send(&self, request: &Request) -> Response {
        let mut s = UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.socket.display()));
        write_message(&mut s, request).expect("write request");
        read_message(&mut s).expect("read response")
    }

    fn http_get(&self, path: &str) -> String {
        http_get_at(&self.metrics_addr(), path)
    }

    fn metric(&self, name: &str) -> f64 {
        metric_value(&self.http_get("/metrics"), name)
    }

    fn status_field(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} not in /proc/<pid>/status"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- daemon log ({}) ----\n{}",
                self.dir.path().display(),
                self.log_text()
            );
        }
    }
}

fn node_kubeconfig(cluster: &netattach_testenv::Cluster, node: &str) -> PathBuf {
    cluster
        .dir()
        .join("kubeconfig")
        .join(format!("{node}.kubeconfig"))
}

async fn create_pod(admin: &Client, ns: &str, name: &str, node: &str, annotations: &[(&str, &str)]) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "annotations": annotations.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "registry.invalid/pause:3.10"}]
        }
    }))
    .expect("pod json");
    Api::<Pod>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating pod {ns}/{name}: {e}"))
}

async fn create_nad(admin: &Client, ns: &str, name: &str, config: &str) {
    let nad = NetworkAttachmentDefinition::new(
        name,
        NetworkAttachmentDefinitionSpec {
            config: Some(config.into()),
        },
    );
    Api::<NetworkAttachmentDefinition>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &nad)
        .await
        .unwrap_or_else(|e| panic!("creating NAD {ns}/{name}: {e}"));
}

fn macvlan_config(name: &str) -> String {
    json!({"cniVersion": "0.3.1", "name": name, "type": "macvlan", "master": "eth1",
           "ipam": {"type": "whereabouts", "range": "192.168.4.0/24"}})
    .to_string()
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().expect("uid")
}

/// Resolves until the daemon's cache has the pod (the watch is asynchronous).
async fn resolve_pod(d: &Daemon, ns: &str, name: &str, uid: Option<&str>, extra: Vec<NadKey>) -> Response {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = d.send(&Request::Resolve {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.map(str::to_string),
            extra: extra.clone(),
            multus_namespace: None,
        });
        match &r {
            Response::Resolved { pod: Some(_), .. } => return r,
            Response::Resolved { pod: None, .. } | Response::Error { code: 11, .. }
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => panic!("resolve {ns}/{name}: {r:?}\n{}", d.log_text()),
        }
    }
}

fn key(ns: &str, name: &str) -> NadKey {
    NadKey {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn sample_status(ns: &str) -> Vec<NetworkStatus> {
    serde_json::from_value(json!([
        {"name": "cbr0", "interface": "eth0", "ips": ["10.42.0.7"], "mac": "0a:58:0a:2a:00:07",
         "default": true, "dns": {}},
        {"name": format!("{ns}/storage"), "interface": "lhnet1", "ips": ["192.168.4.10"],
         "mac": "02:42:c0:a8:04:0a", "dns": {}}
    ]))
    .expect("status json")
}

async fn status_annotation(admin: &Client, ns: &str, name: &str) -> Option<String> {
    let pod = Api::<Pod>::namespaced(admin.clone(), ns)
        .get(name)
        .await
        .expect("get pod");
    pod.metadata
        .annotations
        .and_then(|a| a.get(NETWORK_STATUS_ANNOTATION).cloned())
}

#[tokio::test]
async fn resolve_answers_from_the_caches_with_pod_nads_and_missing() {
    let cluster = netattach_testenv::cluster().await;
    let admin = cluster.admin_client();
    ensure_nodes(&admin, &[NODE, OTHER_NODE]).await;
    let ns = cluster.namespace("daemon-resolve").await;
    let ns = ns.name().to_string();
    let other = cluster.namespace("daemon-resolve-other").await;
    create_nad(&admin, &ns, "storage", &macvlan_config("storage")).await;
    create_nad(&admin, other.name(), "shared", &macvlan_config("shared")).await;

    let mut d = Daemon::start(&node_kubeconfig(cluster, NODE), &[]);
    d.wait_ready().await;

    // Root-only socket: 0600 in a 0700 directory.
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&d.socket), 0o600, "socket mode");
    assert_eq!(mode(d.socket.parent().expect("dir")), 0o700, "socket dir mode");
    assert_eq!(d.send(&Request::Ready), Response::Ok);

    // A pod on another node first, then ours: once ours is visible, the other would be too.
    create_pod(
        &admin,
        &ns,
        "elsewhere",
        OTHER_NODE,
        &[(NETWORKS_ANNOTATION, "storage")],
    )
    .await;
    let networks = format!(
        r#"[{{"name":"storage","interface":"lhnet1"}},{{"name":"shared","namespace":"{}"}},{{"name":"nope"}}]"#,
        other.name()
    );
    let pod = create_pod(
        &admin,
        &ns,
        "im-1",
        NODE,
        &[
            (NETWORKS_ANNOTATION, &networks),
            (DEFAULT_NETWORK_ANNOTATION, "cluster-net"),
        ],
    )
    .await;
    let r = resolve_pod(
        &d,
        &ns,
        "im-1",
        Some(&uid(&pod)),
        vec![key(&ns, "storage"), key(&ns, "extra-missing")],
    )
    .await;
    let Response::Resolved {
        pod: Some(info),
        nads,
        missing,
    } = r
    else {
        panic!("unexpected {r:?}")
    };
    assert_eq!(info.namespace, ns);
    assert_eq!(info.name, "im-1");
    assert_eq!(info.uid, uid(&pod));
    assert_eq!(info.annotations.get(NETWORKS_ANNOTATION), Some(&networks));
    assert_eq!(
        info.annotations
            .get(DEFAULT_NETWORK_ANNOTATION)
            .map(String::as_str),
        Some("cluster-net")
    );
    let found: Vec<(String, String)> = nads
        .iter()
        .map(|n| (n.namespace.clone(), n.name.clone()))
        .collect();
    assert_eq!(
        found,
        vec![
            (ns.clone(), "storage".into()),
            (other.name().to_string(), "shared".into())
        ]
    );
    assert_eq!(nads[0].config, macvlan_config("storage"));
    // The default network lives in kube-system (Multus' multusNamespace); extra is deduplicated.
    assert_eq!(
        missing,
        vec![
            key("kube-system", "cluster-net"),
            key(&ns, "nope"),
            key(&ns, "extra-missing")
        ]
    );

    // The comma form, and a NAD created after the daemon started.
    create_nad(&admin, &ns, "late", &macvlan_config("late")).await;
    let pod2 = create_pod(
        &admin,
        &ns,
        "im-2",
        NODE,
        &[(NETWORKS_ANNOTATION, "late@net5, storage")],
    )
    .await;
    let r = resolve_pod(&d, &ns, "im-2", None, vec![]).await;
    let Response::Resolved {
        pod: Some(info),
        nads,
        missing,
    } = r
    else {
        panic!("unexpected {r:?}")
    };
    assert_eq!(info.uid, uid(&pod2));
    assert_eq!(
        nads.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["late", "storage"]
    );
    assert!(missing.is_empty(), "{missing:?}");

    // The other node's pod is not in this node's cache; an unknown pod is None.
    for name in ["elsewhere", "never-created"] {
        let r = d.send(&Request::Resolve {
            namespace: ns.clone(),
            name: name.into(),
            uid: None,
            extra: vec![],
            multus_namespace: None,
        });
        assert!(matches!(r, Response::Resolved { pod: None, .. }), "{name}: {r:?}");
    }
    // A uid the cache does not have: the pod was recreated and the cache is behind.
    let r = d.send(&Request::Resolve {
        namespace: ns.clone(),
        name: "im-1".into(),
        uid: Some("00000000-0000-0000-0000-000000000000".into()),
        extra: vec![],
        multus_namespace: None,
    });
    assert!(matches!(r, Response::Error { code: 11, .. }), "{r:?}");
    // A request that is not the protocol.
    let mut s = UnixStream::connect(&d.socket).expect("connect");
    s.write_all(b"{\"op\":\"bogus\"}\n").expect("write");
    let r: Response = read_message(&mut s).expect("read");
    assert!(matches!(r, Response::Error { code: 6, .. }), "{r:?}");

    // Metrics name what happened.
    let text = d.http_get("/metrics");
    for needle in [
        "netattach_daemon_requests_total{op=\"resolve\"}",
        "netattach_daemon_request_duration_seconds_bucket{op=\"resolve\",le=",
        "netattach_daemon_errors_total{code=\"11\"}",
        "netattach_daemon_errors_total{code=\"6\"} 1",
        "netattach_daemon_cache_synced 1",
        "netattach_daemon_cache_objects{cache=\"pods\"}",
        "netattach_daemon_cache_objects{cache=\"nads\"}",
        "netattach_daemon_requests_total{op=\"invalid\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(d.metric("netattach_daemon_cache_objects{cache=\"pods\"}") >= 2.0);
    assert!(d.metric("netattach_daemon_cache_objects{cache=\"nads\"}") >= 3.0);
    assert!(d.http_get("/readyz").starts_with("HTTP/1.1 200 OK"));

    // Graceful shutdown: an accepted connection is still answered, then socket and ready file go.
    let mut pending = UnixStream::connect(&d.socket).expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    d.signal(libc::SIGTERM);
    let deadline = Instant::now() + WAIT;
    while d.socket.exists() || d.ready.exists() {
        assert!(
            Instant::now() < deadline,
            "socket or ready file left after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write_message(&mut pending, &Request::Ready).expect("write");
    let r: Response = read_message(&mut pending).expect("the in-flight request is answered");
    assert_eq!(r, Response::Ok);
    let status = d.wait_exit();
    assert!(status.success(), "exit status {status}:\n{}", d.log_text());
    assert!(d.log_text().contains("stopped"), "{}", d.log_text());
}

#[tokio::test]
async fn publish_status_writes_the_annotation_with_the_node_identity() {
    let cluster = netattach_testenv::cluster().await;
    let admin = cluster.admin_client();
    ensure_nodes(&admin, &[NODE, OTHER_NODE]).await;
    let ns = cluster.namespace("daemon-publish").await;
    let ns = ns.name().to_string();
    let pod = create_pod(&admin, &ns, "im-1", NODE, &[]).await;

    // The node identity may not patch the pod itself: only pods/status.
    let node_client = cluster.node_client(NODE);
    let direct = Api::<Pod>::namespaced(node_client, &ns)
        .patch(
            "im-1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"x": "y"}}})),
        )
        .await;
    assert!(
        matches!(direct, Err(kube::Error::Api(ref s)) if s.code == 403),
        "{direct:?}"
    );

    let mut d = Daemon::start(&node_kubeconfig(cluster, NODE), &[]);
    d.wait_ready().await;
    let status = sample_status(&ns);
    let r = d.send(&Request::PublishStatus {
        namespace: ns.clone(),
        name: "im-1".into(),
        uid: Some(uid(&pod)),
        status: status.clone(),
    });
    assert_eq!(r, Response::Ok, "{}", d.log_text());
    let expected = to_annotation(&status).expect("encode");
    assert_eq!(
        status_annotation(&admin, &ns, "im-1").await.as_deref(),
        Some(expected.as_str())
    );

    // A uid precondition that does not hold: refused, nothing written.
    let r = d.send(&Request::PublishStatus {
        namespace: ns.clone(),
        name: "im-1".into(),
        uid: Some("00000000-0000-0000-0000-000000000000".into()),
        status: vec![],
    });
    assert!(
        matches!(r, Response::Error { code: 11, ref message } if message.contains("im-1")),
        "{r:?}"
    );
    assert_eq!(
        status_annotation(&admin, &ns, "im-1").await.as_deref(),
        Some(expected.as_str())
    );
    // No uid: written; a pod that does not exist: the API's message, code 11.
    let r = d.send(&Request::PublishStatus {
        namespace: ns.clone(),
        name: "im-1".into(),
        uid: None,
        status: status[..1].to_vec(),
    });
    assert_eq!(r, Response::Ok);
    assert_eq!(
        status_annotation(&admin, &ns, "im-1").await,
        Some(to_annotation(&status[..1]).expect("encode"))
    );
    let r = d.send(&Request::PublishStatus {
        namespace: ns.clone(),
        name: "ghost".into(),
        uid: None,
        status: status.clone(),
    });
    assert!(
        matches!(r, Response::Error { code: 11, ref message } if message.contains("not found")),
        "{r:?}"
    );
    assert!(d.metric("netattach_daemon_requests_total{op=\"publish_status\"}") >= 4.0);
}

#[tokio::test]
async fn a_restarted_daemon_resyncs_and_serves_what_changed_while_it_was_down() {
    let cluster = netattach_testenv::cluster().await;
    let admin = cluster.admin_client();
    ensure_nodes(&admin, &[NODE, OTHER_NODE]).await;
    let ns = cluster.namespace("daemon-restart").await;
    let ns = ns.name().to_string();
    create_nad(&admin, &ns, "a", &macvlan_config("a")).await;
    let mut d = Daemon::start(&node_kubeconfig(cluster, NODE), &[]);
    d.wait_ready().await;
    create_pod(&admin, &ns, "before", NODE, &[(NETWORKS_ANNOTATION, "a,b")]).await;
    let r = resolve_pod(&d, &ns, "before", None, vec![]).await;
    assert!(
        matches!(r, Response::Resolved { ref missing, .. } if missing == &vec![key(&ns, "b")]),
        "{r:?}"
    );

    // Killed mid-stream: the socket and the ready file are left behind, stale.
    let _ = d.kill();
    assert!(d.socket.exists() && d.ready.exists());
    create_nad(&admin, &ns, "b", &macvlan_config("b")).await;
    let after = create_pod(&admin, &ns, "after", NODE, &[(NETWORKS_ANNOTATION, "a,b")]).await;
    Api::<Pod>::namespaced(admin.clone(), &ns)
        .delete("before", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");

    d.respawn();
    d.wait_ready().await;
    let r = resolve_pod(&d, &ns, "after", Some(&uid(&after)), vec![]).await;
    let Response::Resolved { nads, missing, .. } = r else {
        panic!("unexpected {r:?}")
    };
    assert_eq!(
        nads.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert!(missing.is_empty());
    let r = d.send(&Request::Resolve {
        namespace: ns.clone(),
        name: "before".into(),
        uid: None,
        extra: vec![],
        multus_namespace: None,
    });
    assert!(matches!(r, Response::Resolved { pod: None, .. }), "{r:?}");
    assert!(
        d.log_text().contains("removed a stale socket"),
        "{}",
        d.log_text()
    );
    d.signal(libc::SIGINT);
    assert!(d.wait_exit().success());
    assert!(!d.socket.exists() && !d.ready.exists());
}

/// A ServiceAccount bound to the node ClusterRole, for a test's namespace.
struct NodeServiceAccount {
    admin: Client,
    ns: String,
    name: String,
    binding: String,
}

impl NodeServiceAccount {
    async fn create(admin: &Client, ns: &str) -> NodeServiceAccount {
        let name = "netattach-daemon".to_string();
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &sa)
            .await
            .expect("create service account");
        let binding = format!("netattach-node-{ns}");
        let crb = ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some(binding.clone()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: "netattach-node".into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: name.clone(),
                namespace: Some(ns.into()),
                ..Default::default()
            }]),
        };
        Api::<ClusterRoleBinding>::all(admin.clone())
            .create(&PostParams::default(), &crb)
            .await
            .expect("create binding");
        NodeServiceAccount {
            admin: admin.clone(),
            ns: ns.into(),
            name,
            binding,
        }
    }

    /// A 10-minute token bound to a fresh Secret `secret`: deleting the Secret revokes it.
    async fn token(&self, secret: &str) -> String {
        let s = Secret {
            metadata: ObjectMeta {
                name: Some(secret.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let s = Api::<Secret>::namespaced(self.admin.clone(), &self.ns)
            .create(&PostParams::default(), &s)
            .await
            .expect("create secret");
        let tr = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(600),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Secret".into()),
                    name: Some(secret.into()),
                    uid: s.metadata.uid.clone(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let tr = Api::<ServiceAccount>::namespaced(self.admin.clone(), &self.ns)
            .create_token_request(&self.name, &PostParams::default(), &tr)
            .await
            .expect("token request");
        tr.status.and_then(|s| s.token).expect("token status")
    }

    async fn revoke(&self, secret: &str) {
        Api::<Secret>::namespaced(self.admin.clone(), &self.ns)
            .delete(secret, &DeleteParams::default())
            .await
            .expect("delete secret");
    }

    async fn delete(self) {
        let _ = Api::<ClusterRoleBinding>::all(self.admin.clone())
            .delete(&self.binding, &DeleteParams::default())
            .await;
    }
}

/// A kubeconfig like the admin's, authenticating with `tokenFile: <token_file>`.
fn token_file_kubeconfig(cluster: &netattach_testenv::Cluster, dir: &Path, token_file: &Path) -> PathBuf {
    let text = std::fs::read_to_string(cluster.admin_kubeconfig()).expect("admin kubeconfig");
    let mut kc: serde_json::Value = serde_yaml_ng::from_str(&text).expect("kubeconfig yaml");
    for user in kc["users"].as_array_mut().expect("users") {
        user["user"] = json!({"tokenFile": token_file.display().to_string()});
    }
    let path = dir.join("token.kubeconfig");
    std::fs::write(&path, serde_yaml_ng::to_string(&kc).expect("yaml")).expect("write kubeconfig");
    path
}

/// Replaces the token file atomically, as kubelet does for projected tokens.
fn write_token(path: &Path, token: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, token).expect("write token");
    std::fs::rename(&tmp, path).expect("rename token");
}

/// Whether the API accepts `token` (a pods list in `ns`).
async fn token_works(
    cluster: &netattach_testenv::Cluster,
    token_file: &Path,
    ns: &str,
) -> Result<(), kube::Error> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("t");
    std::fs::copy(token_file, &file).expect("copy token");
    let kc = kube::config::Kubeconfig::read_from(token_file_kubeconfig(cluster, dir.path(), &file))
        .expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    let client = Client::try_from(config).expect("client");
    Api::<Pod>::namespaced(client, ns)
        .list(&Default::default())
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_rotated_and_revoked_token_is_followed_without_restart() {
    let cluster = netattach_testenv::cluster().await;
    let admin = cluster.admin_client();
    ensure_nodes(&admin, &[NODE, OTHER_NODE]).await;
    let ns = cluster.namespace("daemon-token").await;
    let ns = ns.name().to_string();
    let sa = NodeServiceAccount::create(&admin, &ns).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    write_token(&token_file, &sa.token("token-1").await);
    let kubeconfig = token_file_kubeconfig(cluster, dir.path(), &token_file);

    // Watches re-open every 2 s (server-side timeout), so they must authenticate again soon.
    let mut d = Daemon::start(&kubeconfig, &["--watch-timeout", "2"]);
    d.wait_ready().await;
    let p1 = create_pod(&admin, &ns, "p1", NODE, &[]).await;
    resolve_pod(&d, &ns, "p1", Some(&uid(&p1)), vec![]).await;

    // Rotate: a new token in the file, then the old one revoked.
    let old = dir.path().join("old-token");
    std::fs::copy(&token_file, &old).expect("keep old token");
    write_token(&token_file, &sa.token("token-2").await);
    sa.revoke("token-1").await;
    let revoked_at = Instant::now();
    let audit_offset = std::fs::metadata(cluster.audit_log())
        .map(|m| m.len())
        .unwrap_or(0);
    // The old token is really dead (the apiserver checks the bound Secret).
    let deadline = Instant::now() + WAIT;
    loop {
        match token_works(cluster, &old, &ns).await {
            Err(kube::Error::Api(s)) if s.code == 401 => break,
            r => {
                assert!(Instant::now() < deadline, "the old token still works: {r:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // Let every watch cycle at least twice on the new token, well under kube's 50 s re-read.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The watches still deliver (new pod visible), and PublishStatus writes.
    let p2 = create_pod(&admin, &ns, "p2", NODE, &[]).await;
    resolve_pod(&d, &ns, "p2", Some(&uid(&p2)), vec![]).await;
    let status = sample_status(&ns);
    let r = d.send(&Request::PublishStatus {
        namespace: ns.clone(),
        name: "p2".into(),
        uid: Some(uid(&p2)),
        status: status.clone(),
    });
    assert_eq!(r, Response::Ok, "{}", d.log_text());
    assert_eq!(
        status_annotation(&admin, &ns, "p2").await,
        Some(to_annotation(&status).expect("encode"))
    );
    assert!(
        revoked_at.elapsed() < Duration::from_secs(40),
        "too slow to prove anything about a 50 s re-read"
    );
    assert_eq!(
        d.metric("netattach_daemon_api_unauthorized_total"),
        0.0,
        "{}",
        d.log_text()
    );
    assert!(d.metric("netattach_daemon_token_reloads_total") >= 1.0);

    // The apiserver saw the daemon's identity re-open watches after the revocation.
    let audit = std::fs::read(cluster.audit_log()).expect("audit log");
    let audit =
        String::from_utf8_lossy(&audit[usize::try_from(audit_offset).expect("offset")..]).into_owned();
    let user = format!("system:serviceaccount:{ns}:{}", sa.name);
    let rewatches = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["user"]["username"] == user.as_str() && e["verb"] == "watch")
        .count();
    assert!(
        rewatches >= 2,
        "no watch by {user} after the revocation in the audit log"
    );
    sa.delete().await;
}

#[tokio::test]
async fn not_ready_until_synced_and_a_fixed_token_file_heals_without_restart() {
    let cluster = netattach_testenv::cluster().await;
    let admin = cluster.admin_client();
    ensure_nodes(&admin, &[NODE, OTHER_NODE]).await;
    let ns = cluster.namespace("daemon-unsynced").await;
    let ns = ns.name().to_string();
    let sa = NodeServiceAccount::create(&admin, &ns).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    write_token(&token_file, "not-a-valid-token");
    let kubeconfig = token_file_kubeconfig(cluster, dir.path(), &token_file);

    let mut d = Daemon::start(&kubeconfig, &[]);
    let deadline = Instant::now() + WAIT;
    while !d.socket.exists() {
        assert!(Instant::now() < deadline, "no socket:\n{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Lists fail with 401: not synced, so not ready and no guesses.
    while d.metric("netattach_daemon_api_unauthorized_total") < 1.0 {
        assert!(Instant::now() < deadline, "no 401 seen:\n{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(
        d.send(&Request::Ready),
        Response::Error { code: 11, .. }
    ));
    let r = d.send(&Request::Resolve {
        namespace: ns.clone(),
        name: "x".into(),
        uid: None,
        extra: vec![],
        multus_namespace: None,
    });
    assert!(
        matches!(r, Response::Error { code: 11, ref message } if message.contains("synced")),
        "{r:?}"
    );
    assert!(!d.ready.exists());
    assert_eq!(d.metric("netattach_daemon_cache_synced"), 0.0);
    assert!(d.http_get("/readyz").starts_with("HTTP/1.1 503"));

    // A valid token appears in the file: the daemon picks it up on its next retry.
    write_token(&token_file, &sa.token("token-1").await);
    d.wait_ready().await;
    assert_eq!(d.send(&Request::Ready), Response::Ok);
    assert_eq!(d.metric("netattach_daemon_cache_synced"), 1.0);
    sa.delete().await;
}

#[tokio::test]
async fn memory_stays_small_idle_and_under_a_burst_of_200_requests() {
    let cluster = netattach_testenv::cluster().await;
    let admin = cluster.admin_client();
    ensure_nodes(&admin, &[NODE, OTHER_NODE]).await;
    let ns = cluster.namespace("daemon-rss").await;
    let ns = ns.name().to_string();
    create_nad(&admin, &ns, "storage", &macvlan_config("storage")).await;
    let pod = create_pod(
        &admin,
        &ns,
        "im-1",
        NODE,
        &[(NETWORKS_ANNOTATION, "storage@lhnet1")],
    )
    .await;
    let mut d = Daemon::start(&node_kubeconfig(cluster, NODE), &[]);
    d.wait_ready().await;
    resolve_pod(&d, &ns, "im-1", Some(&uid(&pod)), vec![]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = d.status_field("VmRSS:");

    let barrier = std::sync::Arc::new(std::sync::Barrier::new(200));
    let socket = d.socket.clone();
    let started = Instant::now();
    let threads: Vec<_> = (0..200)
        .map(|_| {
            let barrier = barrier.clone();
            let socket = socket.clone();
            let (ns, uid) = (ns.clone(), uid(&pod));
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&socket).expect("connect");
                barrier.wait();
                write_message(
                    &mut s,
                    &Request::Resolve {
                        namespace: ns,
                        name: "im-1".into(),
                        uid: Some(uid),
                        extra: vec![],
                        multus_namespace: None,
                    },
                )
                .expect("write");
                read_message::<Response>(&mut s).expect("read")
            })
        })
        .collect();
    for t in threads {
        let r = t.join().expect("thread");
        assert!(
            matches!(r, Response::Resolved { pod: Some(_), ref nads, .. } if nads.len() == 1),
            "{r:?}"
        );
    }
    let burst = started.elapsed();
    let hwm = d.status_field("VmHWM:");
    let after_rss = d.status_field("VmRSS:");
    eprintln!(
        "daemon memory (this build's profile): idle VmRSS {idle_rss} kB; after 200 concurrent Resolve: VmHWM {hwm} kB, \
         VmRSS {after_rss} kB; burst took {burst:?}"
    );
    // Targets are for the release build (20 / 40 MiB); a debug build maps more code, so the test
    // allows headroom and the numbers are reported.
    assert!(hwm < 64 * 1024, "VmHWM {hwm} kB");
}

/// A stderr nobody reads (a stalled log collector) never stalls the shims: the daemon keeps
/// answering long after the pipe's 64 KiB are full, and counts the log lines it dropped.
#[tokio::test]
async fn a_stderr_nobody_reads_never_stalls_the_requests() {
    let cluster = netattach_testenv::cluster().await;
    let admin = cluster.admin_client();
    ensure_nodes(&admin, &[NODE, OTHER_NODE]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (flags, socket, ready) = daemon_flags(&node_kubeconfig(cluster, NODE), dir.path(), &[]);
    let (mut process, unread_stderr) = DaemonProcess::spawn_with_unread_stderr(CHILD_ENV, flags, WAIT);
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let text = std::fs::read_to_string(&ready).unwrap_or_default();
        if let Some(addr) = text.lines().find_map(|l| l.strip_prefix("metrics=")) {
            break addr.to_string();
        }
        assert!(
            process.exited().is_none(),
            "the daemon exited before it was ready"
        );
        assert!(
            Instant::now() < deadline,
            "the daemon was not ready within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Each Resolve of an unknown pod logs a debug line of ~200 bytes: 4000 of them are ~12
    // pipes' worth, and four times the queue. A daemon that wrote stderr directly would block
    // on the full pipe within the first few hundred, and this read would time out.
    let socket_for_clients = socket.clone();
    let answered = tokio::task::spawn_blocking(move || {
        for i in 0..4000 {
            let mut s = UnixStream::connect(&socket_for_clients).expect("connect");
            s.set_read_timeout(Some(WAIT)).expect("read timeout");
            write_message(
                &mut s,
                &Request::Resolve {
                    namespace: "stalled-log".into(),
                    name: format!("no-such-pod-{i}"),
                    uid: None,
                    extra: vec![],
                    multus_namespace: None,
                },
            )
            .expect("write");
            let r: Response = read_message(&mut s)
                .unwrap_or_else(|e| panic!("request {i} got no answer within {WAIT:?}: {e}"));
            assert!(matches!(r, Response::Resolved { pod: None, .. }), "{r:?}");
        }
        4000
    })
    .await
    .expect("client thread");
    assert_eq!(answered, 4000);

    let text = http_get_at(&metrics, "/metrics");
    let dropped = metric_value(&text, "netattach_daemon_log_lines_dropped_total");
    assert!(
        dropped > 0.0,
        "nothing was dropped, so the pipe was never full:\n{text}"
    );
    drop(unread_stderr);
    process.kill();
}
