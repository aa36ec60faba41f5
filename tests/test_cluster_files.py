"""What can be checked here of the cluster recipes without a GPU or Kubernetes: the
YAML against Ray's own schema, the manifests' shape, that every shipped config fits a
recipe's pods, and the engine arguments each cluster config builds on a GPU."""

import copy
import json
import pathlib

import jsonschema
import pytest
import ray
import yaml

from button_ray.config import load_config
from button_ray.llm.vllm_engine import GPU_MAX_NUM_BATCHED_TOKENS, engine_args_kwargs

CLUSTER = pathlib.Path("cluster")
CLUSTER_CONFIGS = sorted(pathlib.Path("configs").glob("cluster-*.yaml"))


def _doc(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def _cluster_spec(doc):
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _containers(spec):
    yield spec["headGroupSpec"]["template"]["spec"], spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    for group in spec["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        yield pod, pod["containers"][0]


def _pods(spec):
    """(cpus, gpus) of every worker pod the recipe can run, maxReplicas of each group."""
    pods = []
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        pods += [[float(limits["cpu"]), float(limits.get("nvidia.com/gpu", 0))]] * group["maxReplicas"]
    return pods


def test_cluster_launcher_yaml_matches_rays_schema():
    schema_path = pathlib.Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    config = yaml.safe_load((CLUSTER / "launcher-aws-gpu.yaml").read_text())
    jsonschema.validate(config, schema)


def test_cluster_launcher_yaml_passes_rays_own_prepare_and_validate():
    """What `ray up` does with the file before it talks to AWS: ``prepare_config`` (merge
    with the AWS defaults, the docker checks, per-node-type worker bounds), then
    ``validate_config`` (the schema, the head node type, the worker bounds).

    Skipped, because they call AWS with credentials: the provider's
    ``fillout_available_node_types_resources`` (EC2 DescribeInstanceTypes, to learn each
    instance type's CPUs and GPUs) and ``bootstrap_config`` (IAM role, security group,
    key pair, subnets). The SSM ``resolve:ssm:`` image id is resolved by EC2 at launch.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "launcher-aws-gpu.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    assert prepared["available_node_types"]["head"]["max_workers"] == 0
    assert prepared["docker"]["run_options"] == raw["docker"]["run_options"]
    assert prepared["head_start_ray_commands"] == raw["head_start_ray_commands"]

    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu1"]["min_worker"] = 1  # a typo Ray's schema refuses
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(broken))


@pytest.mark.parametrize("name", ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"])
def test_kuberay_manifests_pin_our_ray_turn_auth_on_and_mount_what_vllm_needs(name):
    doc = _doc(name)
    assert doc["apiVersion"] == "ray.io/v1"
    spec = _cluster_spec(doc)
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"] == {"mode": "token"}
    for pod, container in _containers(spec):
        # One secret layout everywhere: S3 keys and the HF token.
        assert {"secretRef": {"name": "button-ray-secrets"}} in container["envFrom"]
        if "nvidia.com/gpu" in container["resources"]["limits"]:
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
            assert "/cache" in mounts, "no weight cache: every restart downloads the model again"
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
            # The node's cache is filled before Ray starts there, with the same secret.
            (fetch,) = [c for c in pod["initContainers"] if c["name"] == "fetch-model"]
            assert fetch["command"][:3] == ["button-ray", "fetch-model", "--config"]
            assert (pathlib.Path("configs") / pathlib.Path(fetch["command"][3]).name).is_file()
            assert {"name": "cache", "mountPath": "/cache"} in fetch["volumeMounts"]
            assert fetch["envFrom"] == container["envFrom"]
    if doc["kind"] == "RayJob":
        job = doc["spec"]
        assert "working_dir" not in job.get("runtimeEnvYAML", ""), "code must come from the image"
        config = job["entrypoint"].split("--config ")[1].split()[0]
        assert config.startswith("/opt/button_ray/configs/")
        assert (pathlib.Path("configs") / pathlib.Path(config).name).is_file()
        assert job["activeDeadlineSeconds"] > 0


def test_the_image_carries_the_configs_and_a_weight_cache():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "COPY configs ./configs" in dockerfile and "WORKDIR /opt/button_ray" in dockerfile
    # What the package build reads: the code and the prompts it ships inside itself.
    assert "COPY button_ray ./button_ray" in dockerfile and "COPY prompts ./prompts" in dockerfile
    assert "HF_HOME=/cache/" in dockerfile


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)
    assert "HF_HUB_ENABLE_HF_TRANSFER" not in env.get("env_vars", {})


def _fits(demands, pods):
    """First-fit decreasing of replica demands (cpus, gpus) into pods; True if all placed."""
    free = [list(p) for p in pods]
    for cpus, gpus in sorted(demands, key=lambda d: (d[1], d[0]), reverse=True):
        for pod in free:
            if pod[0] >= cpus and pod[1] >= gpus:
                pod[0] -= cpus
                pod[1] -= gpus
                break
        else:
            return False
    return True


@pytest.mark.parametrize("config", CLUSTER_CONFIGS, ids=lambda p: p.name)
def test_every_cluster_config_is_schedulable_on_the_raycluster_recipe(config):
    cfg = load_config(config)
    demands = [(p.num_cpus, p.num_gpus) for p in cfg.pools for _ in range(p.replicas)]
    actors = cfg.runtime.actor_num_cpus * (cfg.runtime.bottom_up_actors + cfg.runtime.simulation_actors)
    demands.append((actors, 0))  # the pipeline actors go on the workers too (the head has num-cpus 0)
    assert _fits(demands, _pods(_cluster_spec(_doc("kuberay-raycluster.yaml")))), config


def test_the_rayjob_recipe_fits_the_config_it_runs():
    doc = _doc("kuberay-rayjob.yaml")
    cfg = load_config(pathlib.Path("configs") / doc["spec"]["entrypoint"].split("/configs/")[1].split()[0])
    demands = [(p.num_cpus, p.num_gpus) for p in cfg.pools for _ in range(p.replicas)]
    assert _fits(demands, _pods(_cluster_spec(doc)))


@pytest.mark.parametrize("config", CLUSTER_CONFIGS, ids=lambda p: p.name)
def test_cluster_engines_fill_a_gpu(config):
    """On a GPU the engine batches at least 8192 tokens a step with chunked prefill and
    prefix caching, and holds at least 256 sequences (vLLM's own default on an H100)."""
    for pool in load_config(config).pools:
        kw = engine_args_kwargs(pool.engine, "/models/m", on_cpu=False)
        assert kw["max_num_batched_tokens"] >= GPU_MAX_NUM_BATCHED_TOKENS
        assert kw["enable_chunked_prefill"] is True and kw["enable_prefix_caching"] is True
        assert kw["max_num_seqs"] >= 256
        assert kw["tensor_parallel_size"] == pool.num_gpus
        assert pool.max_inflight >= kw["max_num_seqs"], "the admission bound would starve the engine"


def test_gpu_defaults_leave_explicit_settings_alone():
    from button_ray.config import EngineConfig

    kw = engine_args_kwargs(EngineConfig(max_num_batched_tokens=16384, enable_chunked_prefill=False), "/m",
                            on_cpu=False)
    assert kw["max_num_batched_tokens"] == 16384 and kw["enable_chunked_prefill"] is False


def test_launcher_pins_a_current_gpu_image_and_keeps_the_dashboard_private():
    config = yaml.safe_load((CLUSTER / "launcher-aws-gpu.yaml").read_text())
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"]["ImageId"].startswith("resolve:ssm:/aws/service/deeplearning/"), name
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    assert any("--env-file" in option for option in config["docker"]["run_options"])
