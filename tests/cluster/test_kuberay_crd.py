"""Every KubeRay manifest in cluster/ against KubeRay's CRD schemas, offline.

The schemas are vendored in cluster/schemas/ (README.md there: source, commit, what
stands in for the embedded Kubernetes types). A CRD's openAPIV3Schema does not forbid
unknown fields: the API server prunes them, and ``kubectl apply --validate=strict``
(kubectl's default) refuses them. This test does what the strict check does: every
object whose schema lists its properties gets ``additionalProperties: false``, so a
misspelled key fails like a wrong type. Kubernetes' own extensions (``x-kubernetes-*``)
carry no JSON Schema meaning and are ignored; their CEL rules
(``x-kubernetes-validations``) are not evaluated. Integer-or-string fields are written by
controller-gen as ``anyOf: [integer, string]`` (plus a pattern for quantities), which
JSON Schema validates as it stands.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import pathlib
from typing import Any

import jsonschema
import pytest
import yaml

CLUSTER = pathlib.Path("cluster")
SCHEMAS = CLUSTER / "schemas"
#: The Kubernetes version of the core types the vendored CRDs embed (README.md there).
KUBERNETES = "v1.35.0"
#: JSON Schema keywords the vendored CRDs use; anything else (``nullable``,
#: ``x-kubernetes-preserve-unknown-fields`` ...) would need handling first, so it fails here.
_KEYWORDS = {"type", "properties", "items", "additionalProperties", "required", "enum", "default", "format",
             "pattern", "anyOf", "minimum", "minItems"}


def _crd(name: str) -> dict:
    doc = yaml.safe_load((SCHEMAS / name).read_text())
    (version,) = [v for v in doc["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def _kubernetes_defs() -> dict:
    """The strict Kubernetes schemas of the core types, by definition name."""
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"{KUBERNETES}-local-strict"
    defs = json.loads((root / "_definitions.json").read_text())["$defs"]
    # Quantities as the CRDs state them (an integer, or a string of the quantity grammar):
    # Kubernetes' JSON schema takes any string, where the API server refuses "128GB".
    defs["io.k8s.apimachinery.pkg.api.resource.Quantity"] = {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
                   r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
    }
    return defs


def _strict(node: dict, cluster_spec: dict) -> dict:
    """The JSON Schema of a CRD schema node, unknown fields forbidden, stand-ins resolved."""
    if "x-button-ray-kubernetes" in node:
        return {"$ref": f"#/$defs/{node['x-button-ray-kubernetes']}"}
    if "x-button-ray-raycluster-spec" in node:
        return cluster_spec
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key not in _KEYWORDS:
            raise AssertionError(f"CRD schema keyword {key!r} is not handled by this test")
        if key == "properties":
            value = {name: _strict(sub, cluster_spec) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            value = _strict(value, cluster_spec)
        elif key == "anyOf":
            value = [_strict(sub, cluster_spec) for sub in value]
        out[key] = value
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _validator(crd_file: str) -> jsonschema.Draft202012Validator:
    cluster_spec = _strict(_crd("ray.io_rayclusters.yaml")["properties"]["spec"], {})
    schema = _strict(_crd(crd_file), cluster_spec)
    # The API server checks a resource's metadata against ObjectMeta itself.
    schema["properties"]["metadata"] = {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    schema["$defs"] = _kubernetes_defs()
    return jsonschema.Draft202012Validator(schema)


_CRDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}


def _errors(doc: dict) -> list[str]:
    validator = _validator(_CRDS[doc["kind"]])
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def _manifests() -> list[tuple[str, int, dict]]:
    """(file, document index, document) of every KubeRay resource in cluster/*.yaml."""
    found = []
    for path in sorted(CLUSTER.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("ray.io/"):
                found.append((path.name, i, doc))
    return found


def test_the_recipes_hold_a_raycluster_and_a_rayjob():
    assert {(name, doc["kind"]) for name, _, doc in _manifests()} >= {
        ("kuberay-raycluster.yaml", "RayCluster"), ("kuberay-rayjob.yaml", "RayJob")}


@pytest.mark.parametrize("name,index,doc", [pytest.param(*m, id=f"{m[0]}#{m[1]}") for m in _manifests()])
def test_every_kuberay_manifest_matches_the_crd_schema(name, index, doc):
    assert doc["apiVersion"] == "ray.io/v1"
    assert _errors(doc) == [], f"{name} (document {index})"


def _raycluster() -> dict:
    return copy.deepcopy(next(doc for name, _, doc in _manifests() if name == "kuberay-raycluster.yaml"))


def test_a_misspelled_ray_field_is_refused():
    """A typo in a Ray-specific field: the CRD lists the group's fields, the strict check
    refuses any other (the API server would drop it, and the group would get its default)."""
    doc = _raycluster()
    group = doc["spec"]["workerGroupSpecs"][0]
    group["maxReplica"] = group.pop("maxReplicas")
    errors = _errors(doc)
    assert any("workerGroupSpecs.0" in e and "'maxReplica' was unexpected" in e for e in errors), errors
    assert any("'maxReplicas' is a required property" in e for e in errors), errors


def test_a_misspelled_pod_field_and_a_wrong_type_are_refused():
    doc = _raycluster()
    head = doc["spec"]["headGroupSpec"]
    head["rayStartParams"]["num-cpus"] = 0  # the CRD wants strings here
    worker = doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    worker["containers"][0]["volumeMount"] = worker["containers"][0].pop("volumeMounts")
    doc["spec"]["workerGroupSpecs"][0]["replicas"] = "8"
    errors = _errors(doc)
    assert any(e.startswith("spec.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'") for e in errors)
    assert any("containers.0" in e and "'volumeMount' was unexpected" in e for e in errors), errors
    assert any(e.startswith("spec.workerGroupSpecs.0.replicas: '8' is not of type 'integer'") for e in errors)


def test_resource_quantities_are_integers_or_quantity_strings():
    doc = _raycluster()
    limits = doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    limits["cpu"], limits["nvidia.com/gpu"] = 16, 1
    assert _errors(doc) == []
    limits["memory"] = "128GB"  # Kubernetes spells it 128G or 128Gi
    assert [e for e in _errors(doc) if "limits.memory" in e], "an invalid quantity passed"
