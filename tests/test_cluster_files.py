"""What can be validated here of the cluster recipes: YAML against Ray's own schema."""

import json
import pathlib

import jsonschema
import ray
import yaml


def test_cluster_launcher_yaml_matches_rays_schema():
    schema_path = pathlib.Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    config = yaml.safe_load(pathlib.Path("cluster/launcher-aws-gpu.yaml").read_text())
    jsonschema.validate(config, schema)


def test_kuberay_manifests_are_well_formed_and_pin_our_ray():
    for name in ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml"):
        doc = yaml.safe_load(pathlib.Path("cluster", name).read_text())
        assert doc["apiVersion"] == "ray.io/v1"
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        assert spec["rayVersion"] == ray.__version__
        if doc["kind"] == "RayJob":
            assert doc["spec"]["entrypoint"].startswith("button-ray generate --config configs/")


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(pathlib.Path("cluster/runtime_env.yaml").read_text())
    RuntimeEnv(**env)
