//! Our CRDs (deploy/crds/) against the CRD files shipped in the upstream Go modules pinned under
//! tools/go/, field by field: group, names, scope, versions, served/storage, subresources, and the
//! whole OpenAPI schema (properties, types, required lists, additionalProperties, items, ...).
//! Descriptions are prose and are not compared.
//!
//! Needs `go` and the Go module proxy (or a warm module cache); no cluster.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::{Map, Value};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The directory of `module` as pinned by tools/go/<tools_dir>/go.mod, downloaded if needed.
fn module_dir(tools_dir: &str, module: &str) -> PathBuf {
    let dir = repo_root().join("tools/go").join(tools_dir);
    let out = Command::new("go")
        .args(["mod", "download", "-json", module])
        .current_dir(&dir)
        .env("GOFLAGS", "-mod=readonly")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running `go mod download {module}` in {}: {e}\n  install Go >= 1.26 (tools/README.md)",
                dir.display()
            )
        });
    assert!(
        out.status.success(),
        "`go mod download -json {module}` in {} failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).expect("go mod download -json output");
    let module_dir = info["Dir"]
        .as_str()
        .unwrap_or_else(|| panic!("no Dir for {module}: {info}"));
    eprintln!("upstream {module} {} at {module_dir}", info["Version"]);
    PathBuf::from(module_dir)
}

/// Every YAML document in `path` that is a CustomResourceDefinition named `name`.
fn load_crd(path: &Path, name: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut found = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        if v["kind"] == "CustomResourceDefinition" && v["metadata"]["name"] == name {
            found.push(v);
        }
    }
    assert_eq!(
        found.len(),
        1,
        "{}: expected exactly one CRD named {name}",
        path.display()
    );
    found.remove(0)
}

fn ours(file: &str, name: &str) -> Value {
    load_crd(&repo_root().join("deploy/crds").join(file), name)
}

/// The comparable part of a CRD: name and spec, without prose, with lists that are sets sorted
/// and with the defaults the apiserver fills in made explicit.
fn normalize(crd: &Value) -> Value {
    let mut out = Map::new();
    out.insert("metadata.name".into(), crd["metadata"]["name"].clone());
    let mut spec = strip_descriptions(&crd["spec"], false);
    if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut) {
        if !names.contains_key("listKind")
            && let Some(kind) = names.get("kind").and_then(Value::as_str)
        {
            let list_kind = format!("{kind}List");
            names.insert("listKind".into(), Value::String(list_kind));
        }
        if !names.contains_key("singular")
            && let Some(kind) = names.get("kind").and_then(Value::as_str)
        {
            let singular = kind.to_ascii_lowercase();
            names.insert("singular".into(), Value::String(singular));
        }
    }
    out.insert("spec".into(), spec);
    Value::Object(out)
}

/// Drops `description` (a schema keyword) everywhere, but keeps a *property* named
/// "description"; sorts `required` and `shortNames`.
fn strip_descriptions(v: &Value, in_properties: bool) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                if !in_properties && k == "description" {
                    continue;
                }
                let mut val = strip_descriptions(val, !in_properties && k == "properties");
                if !in_properties
                    && (k == "required" || k == "shortNames")
                    && let Value::Array(a) = &mut val
                {
                    a.sort_by_key(Value::to_string);
                }
                out.insert(k.clone(), val);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| strip_descriptions(x, false)).collect()),
        other => other.clone(),
    }
}

/// Field-by-field differences between `ours` and `upstream`. With `exact`, fields that only we
/// have are differences too; otherwise upstream only has to be contained in ours.
fn diff(ours: &Value, upstream: &Value, path: &str, exact: bool, out: &mut Vec<String>) {
    match (ours, upstream) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, bv) in b {
                let p = format!("{path}.{k}");
                match a.get(k) {
                    Some(av) => diff(av, bv, &p, exact, out),
                    None => out.push(format!("{p}: missing in ours, upstream has {bv}")),
                }
            }
            if exact {
                for (k, av) in a {
                    if !b.contains_key(k) {
                        out.push(format!("{path}.{k}: only in ours ({av})"));
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if exact || a.len() == b.len() => {
            if a.len() != b.len() {
                out.push(format!(
                    "{path}: ours has {} items, upstream {}: ours {ours}, upstream {upstream}",
                    a.len(),
                    b.len()
                ));
                return;
            }
            for (i, (av, bv)) in a.iter().zip(b).enumerate() {
                diff(av, bv, &format!("{path}[{i}]"), exact, out);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            // Containment for sets such as shortNames: every upstream item must be in ours.
            for bv in b {
                if !a.contains(bv) {
                    out.push(format!("{path}: upstream item {bv} missing in ours {ours}"));
                }
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: ours {a}, upstream {b}")),
    }
}

fn assert_same(ours: &Value, upstream: &Value, exact: bool, what: &str) {
    let mut out = Vec::new();
    diff(&normalize(ours), &normalize(upstream), "", exact, &mut out);
    assert!(
        out.is_empty(),
        "{what}: {} difference(s):\n  {}",
        out.len(),
        out.join("\n  ")
    );
}

const WHEREABOUTS: &str = "github.com/k8snetworkplumbingwg/whereabouts";
const MULTUS: &str = "gopkg.in/k8snetworkplumbingwg/multus-cni.v4";
const NAD_CLIENT: &str = "github.com/k8snetworkplumbingwg/network-attachment-definition-client";
const NAD: &str = "network-attachment-definitions.k8s.cni.cncf.io";

#[test]
fn whereabouts_crds_match_upstream() {
    let dir = module_dir("whereabouts", WHEREABOUTS).join("doc/crds");
    for plural in ["ippools", "overlappingrangeipreservations", "nodeslicepools"] {
        let name = format!("{plural}.whereabouts.cni.cncf.io");
        let upstream = load_crd(&dir.join(format!("whereabouts.cni.cncf.io_{plural}.yaml")), &name);
        let ours = ours(&format!("{name}.yaml"), &name);
        assert_same(&ours, &upstream, true, &name);
        // Spot checks of what the compatibility contract rests on, stated plainly.
        assert_eq!(ours["spec"]["group"], "whereabouts.cni.cncf.io");
        assert_eq!(ours["spec"]["scope"], "Namespaced");
        assert_eq!(ours["spec"]["versions"][0]["name"], "v1alpha1");
        assert_eq!(ours["spec"]["versions"][0]["storage"], true);
    }
}

#[test]
fn nad_crd_matches_multus() {
    // What Multus v4 installs (and what rke2-multus on K3s ships): must match exactly.
    let path = module_dir("multus", MULTUS).join("deployments/multus-daemonset-thick.yml");
    let upstream = load_crd(&path, NAD);
    let ours = ours(&format!("{NAD}.yaml"), NAD);
    assert_same(
        &ours,
        &upstream,
        true,
        "NAD vs multus deployments/multus-daemonset-thick.yml",
    );
    assert_eq!(
        ours["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["config"]
            ["type"],
        "string"
    );
}

#[test]
fn nad_crd_contains_the_nad_client_artifact() {
    // The NPWG client library's reference CRD is a subset (no apiVersion/kind/metadata properties,
    // one short name): everything it declares must be in ours, unchanged.
    let path = module_dir("multus", NAD_CLIENT).join("artifacts/networks-crd.yaml");
    let upstream = load_crd(&path, NAD);
    assert_same(
        &ours(&format!("{NAD}.yaml"), NAD),
        &upstream,
        false,
        "NAD vs network-attachment-definition-client artifacts/networks-crd.yaml",
    );
}

#[test]
fn deploy_crds_holds_exactly_the_four_crds() {
    let mut files: Vec<String> = std::fs::read_dir(repo_root().join("deploy/crds"))
        .expect("deploy/crds")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "ippools.whereabouts.cni.cncf.io.yaml",
            "network-attachment-definitions.k8s.cni.cncf.io.yaml",
            "nodeslicepools.whereabouts.cni.cncf.io.yaml",
            "overlappingrangeipreservations.whereabouts.cni.cncf.io.yaml",
        ]
    );
}

#[test]
fn the_comparison_sees_differences() {
    // Guard against a vacuous comparison: a changed type, a dropped required field and an extra
    // property must each be reported.
    let name = "ippools.whereabouts.cni.cncf.io";
    let base = ours(&format!("{name}.yaml"), name);
    let schema = "/spec/versions/0/schema/openAPIV3Schema/properties/spec";

    let mut changed = base.clone();
    *changed
        .pointer_mut(&format!("{schema}/properties/range/type"))
        .expect("range") = "integer".into();
    let mut dropped = base.clone();
    *dropped
        .pointer_mut(&format!("{schema}/required"))
        .expect("required") = serde_json::json!(["range"]);
    let mut extra = base.clone();
    extra
        .pointer_mut(&format!("{schema}/properties"))
        .and_then(Value::as_object_mut)
        .expect("properties")
        .insert("extra".into(), serde_json::json!({"type": "string"}));
    let mut served = base.clone();
    *served.pointer_mut("/spec/versions/0/served").expect("served") = false.into();

    for (what, variant) in [
        ("type", changed),
        ("required", dropped),
        ("extra", extra),
        ("served", served),
    ] {
        let mut out = Vec::new();
        diff(&normalize(&variant), &normalize(&base), "", true, &mut out);
        assert_eq!(out.len(), 1, "{what}: {out:?}");
    }
    // Descriptions are not compared.
    let mut described = base.clone();
    *described
        .pointer_mut(&format!("{schema}/description"))
        .expect("description") = "other prose".into();
    let mut out = Vec::new();
    diff(&normalize(&described), &normalize(&base), "", true, &mut out);
    assert!(out.is_empty(), "{out:?}");
}
