//! The `k8s.cni.cncf.io/v1` `NetworkAttachmentDefinition` as a typed kube resource, and the
//! conversion to the [`Nad`] the shim needs.
//!
//! Only `spec.config` is modelled (the CRD's schema has nothing else in `spec`); the cache keeps
//! only the `resourceName` annotation of each NAD (see [`strip`]).

use kube::CustomResource;
use kube::ResourceExt;
use netattach_cluster::annotation::RESOURCE_NAME_ANNOTATION;
use netattach_cluster::delegates::Nad;
use serde::{Deserialize, Serialize};

/// `spec` of a NetworkAttachmentDefinition.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "k8s.cni.cncf.io",
    version = "v1",
    kind = "NetworkAttachmentDefinition",
    plural = "network-attachment-definitions",
    namespaced,
    schema = "disabled"
)]
pub struct NetworkAttachmentDefinitionSpec {
    /// The CNI config (JSON text); empty or absent means "the file in confDir with this name".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// Drops what the daemon never reads, to keep the watch cache small: managed fields, labels,
/// owner references, finalizers and every annotation but `k8s.v1.cni.cncf.io/resourceName`.
pub fn strip(nad: &mut NetworkAttachmentDefinition) {
    let meta = &mut nad.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k == RESOURCE_NAME_ANNOTATION);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// The [`Nad`] view of a cached NAD.
pub fn to_nad(nad: &NetworkAttachmentDefinition) -> Nad {
    Nad {
        namespace: nad.namespace().unwrap_or_default(),
        name: nad.name_any(),
        config: nad.spec.config.clone().unwrap_or_default(),
        resource_name: nad.annotations().get(RESOURCE_NAME_ANNOTATION).cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resource_matches_the_crd() {
        use kube::Resource;
        assert_eq!(NetworkAttachmentDefinition::group(&()), "k8s.cni.cncf.io");
        assert_eq!(NetworkAttachmentDefinition::version(&()), "v1");
        assert_eq!(
            NetworkAttachmentDefinition::plural(&()),
            "network-attachment-definitions"
        );
        assert_eq!(
            NetworkAttachmentDefinition::kind(&()),
            "NetworkAttachmentDefinition"
        );
    }

    #[test]
    fn strip_keeps_only_what_the_shim_needs() -> Result<(), serde_json::Error> {
        let mut nad: NetworkAttachmentDefinition = serde_json::from_value(serde_json::json!({
            "apiVersion": "k8s.cni.cncf.io/v1",
            "kind": "NetworkAttachmentDefinition",
            "metadata": {
                "name": "storage", "namespace": "longhorn-system",
                "labels": {"a": "b"},
                "annotations": {
                    "k8s.v1.cni.cncf.io/resourceName": "intel.com/sriov",
                    "kubectl.kubernetes.io/last-applied-configuration": "{...}"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            },
            "spec": {"config": "{\"cniVersion\":\"0.3.1\",\"type\":\"macvlan\"}"}
        }))?;
        strip(&mut nad);
        assert!(nad.metadata.managed_fields.is_none());
        assert!(nad.metadata.labels.is_none());
        assert_eq!(nad.annotations().len(), 1);
        let view = to_nad(&nad);
        assert_eq!(view.namespace, "longhorn-system");
        assert_eq!(view.name, "storage");
        assert_eq!(view.config, r#"{"cniVersion":"0.3.1","type":"macvlan"}"#);
        assert_eq!(view.resource_name.as_deref(), Some("intel.com/sriov"));
        Ok(())
    }

    #[test]
    fn a_nad_without_config_has_an_empty_config() -> Result<(), serde_json::Error> {
        let nad: NetworkAttachmentDefinition = serde_json::from_value(serde_json::json!({
            "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "byname", "namespace": "default"},
            "spec": {}
        }))?;
        assert_eq!(to_nad(&nad).config, "");
        Ok(())
    }
}
