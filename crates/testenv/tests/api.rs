//! The test control plane through kube-rs: NADs, pods, IPPool optimistic concurrency and the node
//! identity's RBAC. Needs `eval "$(tools/testenv up)"` (or tools/test-k8s); fails without it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, CustomResource};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// `k8s.cni.cncf.io/v1` NetworkAttachmentDefinition (the cluster crate will own the real type).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "k8s.cni.cncf.io",
    version = "v1",
    kind = "NetworkAttachmentDefinition",
    plural = "network-attachment-definitions",
    namespaced,
    schema = "disabled"
)]
struct NadSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    config: String,
}

/// `whereabouts.cni.cncf.io/v1alpha1` IPPool.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "whereabouts.cni.cncf.io",
    version = "v1alpha1",
    kind = "IPPool",
    plural = "ippools",
    namespaced,
    schema = "disabled"
)]
struct IPPoolSpec {
    range: String,
    allocations: BTreeMap<String, IPAllocation>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
struct IPAllocation {
    id: String,
    podref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ifname: Option<String>,
}

const STORAGE_NAD: &str = r#"{"cniVersion":"0.3.1","name":"storage","type":"macvlan","master":"eth1","mode":"bridge","ipam":{"type":"whereabouts","range":"192.168.4.0/24"}}"#;

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test]
async fn nad_create_get_patch() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("nad").await;
    let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(cluster.admin_client(), ns.name());

    let nad = NetworkAttachmentDefinition::new(
        "storage",
        NadSpec {
            config: STORAGE_NAD.into(),
        },
    );
    let created = nads
        .create(&PostParams::default(), &nad)
        .await
        .expect("create NAD");
    assert_eq!(created.spec.config, STORAGE_NAD);

    let got = nads.get("storage").await.expect("get NAD");
    assert_eq!(got.spec, nad.spec);
    assert!(got.metadata.resource_version.is_some());

    let new_config = STORAGE_NAD.replace("eth1", "eth2");
    let patch = json!({
        "metadata": {"annotations": {"k8s.v1.cni.cncf.io/resourceName": "example.com/storage"}},
        "spec": {"config": new_config},
    });
    let patched = nads
        .patch("storage", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch NAD");
    assert_eq!(patched.spec.config, new_config);
    assert_eq!(
        patched
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("k8s.v1.cni.cncf.io/resourceName"))
            .map(String::as_str),
        Some("example.com/storage")
    );

    // The node daemon may read NADs but not change them.
    let node_nads: Api<NetworkAttachmentDefinition> =
        Api::namespaced(cluster.node_client("node-1"), ns.name());
    assert_eq!(
        node_nads
            .get("storage")
            .await
            .expect("node reads NAD")
            .spec
            .config,
        new_config
    );
    let err = node_nads
        .patch(
            "storage",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"config": "{}"}})),
        )
        .await
        .expect_err("node must not patch NADs");
    assert_eq!(api_code(&err), Some(403), "{err}");

    ns.delete().await.expect("delete namespace");
}

#[tokio::test]
async fn pod_create_get_patch() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("pod").await;
    let pods: Api<Pod> = Api::namespaced(cluster.admin_client(), ns.name());

    // No scheduler and no kubelet: the pod stays Pending without a node, which is all we need.
    let networks = r#"[{"namespace":"kube-system","name":"storage","interface":"lhnet1"}]"#;
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "instance-manager",
            "annotations": {"k8s.v1.cni.cncf.io/networks": networks},
        },
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/pause:none"}]},
    }))
    .expect("pod literal");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");

    let got = pods.get("instance-manager").await.expect("get pod");
    let annotations = got.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("k8s.v1.cni.cncf.io/networks").map(String::as_str),
        Some(networks)
    );
    assert_eq!(got.spec.as_ref().and_then(|s| s.node_name.clone()), None);

    // The admin patches the pod itself.
    let patched = pods
        .patch(
            "instance-manager",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"app": "longhorn"}}})),
        )
        .await
        .expect("patch pod");
    assert_eq!(
        patched
            .metadata
            .labels
            .unwrap_or_default()
            .get("app")
            .map(String::as_str),
        Some("longhorn")
    );

    // The node daemon publishes network-status through pods/status, as Multus does ...
    let status = r#"[{"name":"kube-system/storage","interface":"lhnet1","ips":["192.168.4.1"],"mac":"02:00:00:00:00:01"}]"#;
    let node_pods: Api<Pod> = Api::namespaced(cluster.node_client("node-1"), ns.name());
    let ann = json!({"metadata": {"annotations": {"k8s.v1.cni.cncf.io/network-status": status}}});
    node_pods
        .patch_status("instance-manager", &PatchParams::default(), &Patch::Merge(&ann))
        .await
        .expect("node patches pods/status");
    let got = pods.get("instance-manager").await.expect("get pod");
    assert_eq!(
        got.metadata
            .annotations
            .unwrap_or_default()
            .get("k8s.v1.cni.cncf.io/network-status")
            .map(String::as_str),
        Some(status)
    );
    // ... but may not patch the pod object itself.
    let err = node_pods
        .patch("instance-manager", &PatchParams::default(), &Patch::Merge(&ann))
        .await
        .expect_err("node must not patch pods");
    assert_eq!(api_code(&err), Some(403), "{err}");

    ns.delete().await.expect("delete namespace");
}

#[tokio::test]
async fn ippool_stale_update_conflicts() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("ippool").await;
    // The node identity is the one that writes pools in production.
    let pools: Api<IPPool> = Api::namespaced(cluster.node_client("node-1"), ns.name());

    let pool = IPPool::new(
        "192.168.4.0-24",
        IPPoolSpec {
            range: "192.168.4.0/24".into(),
            allocations: BTreeMap::new(),
        },
    );
    let created = pools
        .create(&PostParams::default(), &pool)
        .await
        .expect("create IPPool");
    let stale = created.clone();

    let mut first = created;
    first.spec.allocations.insert(
        "1".into(),
        IPAllocation {
            id: "c1".into(),
            podref: "ns/pod-a".into(),
            ifname: Some("net1".into()),
        },
    );
    let first = pools
        .replace("192.168.4.0-24", &PostParams::default(), &first)
        .await
        .expect("first update");
    assert_ne!(first.metadata.resource_version, stale.metadata.resource_version);

    // A writer that read before the first update must lose: 409 Conflict, nothing overwritten.
    let mut second = stale;
    second.spec.allocations.insert(
        "1".into(),
        IPAllocation {
            id: "c2".into(),
            podref: "ns/pod-b".into(),
            ifname: None,
        },
    );
    let err = pools
        .replace("192.168.4.0-24", &PostParams::default(), &second)
        .await
        .expect_err("stale update");
    assert_eq!(api_code(&err), Some(409), "{err}");
    let now = pools.get("192.168.4.0-24").await.expect("get IPPool");
    assert_eq!(
        now.spec.allocations.get("1").map(|a| a.podref.as_str()),
        Some("ns/pod-a")
    );

    ns.delete().await.expect("delete namespace");
}

#[tokio::test]
async fn node_identity_cannot_read_secrets() {
    let cluster = netattach_testenv::cluster().await;
    let ns = cluster.namespace("secret").await;
    let mut secret = Secret::default();
    secret.metadata.name = Some("s".into());
    secret.string_data = Some([("k".to_string(), "v".to_string())].into());
    Api::<Secret>::namespaced(cluster.admin_client(), ns.name())
        .create(&PostParams::default(), &secret)
        .await
        .expect("admin creates a Secret");

    for node in cluster.nodes() {
        let secrets: Api<Secret> = Api::namespaced(cluster.node_client(node), ns.name());
        let err = secrets.get("s").await.expect_err("node must not read Secrets");
        assert_eq!(api_code(&err), Some(403), "{node}: {err}");
        let err = secrets
            .list(&Default::default())
            .await
            .expect_err("node must not list Secrets");
        assert_eq!(api_code(&err), Some(403), "{node}: {err}");
        // The same identity does have its own rights: pods are readable.
        Api::<Pod>::namespaced(cluster.node_client(node), ns.name())
            .list(&Default::default())
            .await
            .expect("node lists pods");
    }

    ns.delete().await.expect("delete namespace");
}
