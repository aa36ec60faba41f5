from pathlib import Path

import pytest
from pydantic import ValidationError

from button_ray.config import MethodConfig, PoolConfig, RunConfig, load_config
from button_ray.errors import ConfigError


def test_defaults_valid_and_fingerprint_stable():
    a, b = RunConfig(), RunConfig()
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16


def test_fingerprint_ignores_runtime_and_output_but_not_method():
    base = RunConfig()
    same = load_config(None, ["runtime.simulation_actors=4", "output.uri=/tmp/x", "scenarios.limit=3"])
    assert same.fingerprint() == base.fingerprint()
    changed = load_config(None, ["method.parallel_ratio=0.9"])
    assert changed.fingerprint() != base.fingerprint()
    assert RunConfig(seed=1).fingerprint() != base.fingerprint()


def test_fingerprint_covers_templates():
    base = RunConfig()
    assert base.fingerprint({"a.j2": "1"}) != base.fingerprint({"a.j2": "2"})


def test_field_errors_name_the_field():
    with pytest.raises(ValidationError) as exc:
        load_config(None, ["method.max_assistant_turns=0"])
    assert exc.value.errors()[0]["loc"] == ("method", "max_assistant_turns")
    with pytest.raises(ValidationError) as exc:
        load_config(None, ["method.no_such_field=1"])
    assert "no_such_field" in str(exc.value)


def test_bad_override_syntax():
    with pytest.raises(ConfigError):
        load_config(None, ["method.parallel_ratio"])


def test_every_role_served_exactly_once():
    with pytest.raises(ValidationError, match="no pool serves"):
        RunConfig(pools=(PoolConfig(roles=("assistant_agent",)),))
    with pytest.raises(ValidationError, match="served by pools"):
        RunConfig(pools=(PoolConfig(name="a"), PoolConfig(name="b")))


def test_shipped_configs_load():
    import pathlib

    for path in sorted(pathlib.Path("configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.pools, path


def test_method_patterns_and_function_counts_are_checked():
    from button_ray.config import MethodConfig

    with pytest.raises(ValidationError, match="anchored"):
        MethodConfig(function_name_pattern="[a-z]+")
    with pytest.raises(ValidationError, match="not a regex"):
        MethodConfig(parameter_name_pattern="^([a-z]$")
    with pytest.raises(ValidationError, match="min_functions_per_subtask"):
        MethodConfig(min_functions_per_subtask=3, max_functions_per_subtask=2)


def test_local_config_turns_the_small_model_aids_on():
    cfg = load_config(Path(__file__).parent.parent / "configs" / "local.yaml")
    m = cfg.method
    assert m.tight.plain_text and m.tight.plain_prose and m.steer_calls and m.function_names_from_subtask
    assert m.min_functions_per_subtask >= 1 and m.user_openers
    assert set(cfg.resolved_method().constraints.values()) == {"tight"}
    default = type(m)()
    assert not (default.tight.plain_text or default.tight.plain_prose or default.steer_calls or default.user_openers)
    assert default.strength("assistant_agent") == "structure"


@pytest.mark.parametrize("name", ["cluster-8b.yaml", "cluster-70b.yaml", "cluster-split-roles.yaml"])
def test_cluster_configs_run_at_structure_strength(name: str):
    cfg = load_config(Path(__file__).parent.parent / "configs" / name)
    assert set(cfg.resolved_method().constraints.values()) == {"structure"}


def test_constraint_strength_per_pool_and_role():
    cfg = RunConfig(
        pools=[PoolConfig(name="big", roles=("user_agent", "assistant_agent", "tool_agent")),
               PoolConfig(name="small", constraints="tight",
                          roles=("atomic_task", "composition", "composition_filter", "functions",
                                 "scenario_extraction", "scenario_expansion"))],
        method=MethodConfig(constraints={"tool_agent": "tight", "functions": "off"}),
    )  # fmt: skip
    m = cfg.resolved_method()
    assert m.strength("assistant_agent") == "structure" and m.strength("atomic_task") == "tight"
    assert m.strength("tool_agent") == "tight" and m.strength("functions") == "off"
    # the strength changes outputs: it is in the fingerprint
    other = cfg.model_copy(update={"pools": (cfg.pools[0], cfg.pools[1].model_copy(update={"constraints": "structure"}))})
    assert other.fingerprint({}) != cfg.fingerprint({})


def _config_classes():
    """Every config model reachable from RunConfig."""
    from typing import get_args

    from pydantic import BaseModel

    from button_ray.config import _Config

    seen, todo = [], [RunConfig]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for field in cls.model_fields.values():
            stack = [field.annotation]
            while stack:
                t = stack.pop()
                if isinstance(t, type) and issubclass(t, BaseModel):
                    if issubclass(t, _Config):
                        todo.append(t)
                else:
                    stack.extend(get_args(t))
    return seen


def test_every_config_field_is_classified_for_the_fingerprint():
    """A new field must say whether it changes outputs; one that says neither fails here."""
    classes = _config_classes()
    assert len(classes) >= 8
    for cls in classes:
        fields = set(cls.model_fields)
        assert not cls.OUTPUTS & cls.NOT_OUTPUTS, f"{cls.__name__}: a field in both classes"
        assert cls.OUTPUTS | cls.NOT_OUTPUTS == fields, (
            f"{cls.__name__}: unclassified {sorted(fields - cls.OUTPUTS - cls.NOT_OUTPUTS)}, "
            f"unknown {sorted((cls.OUTPUTS | cls.NOT_OUTPUTS) - fields)}")


@pytest.mark.parametrize("override", [
    "output.shard_size=3", "scenarios.concurrency=2", "scenarios.expansion_rounds=1",
    "scenarios.dedup_threshold=0.5", "scenarios.embedding_model=/models/x", "scenarios.conversation_max_chars=300",
    "scenarios.scenario_max_words=5", "scenarios.storage_options={key: k}",
])
def test_fields_that_do_not_change_records_leave_the_fingerprint(override):
    assert load_config(None, [override]).fingerprint() == RunConfig().fingerprint()


def test_engine_memory_and_pool_layout_leave_the_fingerprint_but_the_model_does_not():
    from button_ray.config import EngineConfig

    base = RunConfig().fingerprint()
    for pool in (PoolConfig(name="other", replicas=4, num_gpus=1, max_inflight=7),
                 PoolConfig(num_gpus=2, engine=EngineConfig(gpu_memory_utilization=0.2, max_num_seqs=8,
                                                            max_num_batched_tokens=4096, tensor_parallel_size=2))):
        assert RunConfig(pools=(pool,)).fingerprint() == base
    for engine in (EngineConfig(model="org/other"), EngineConfig(dtype="float16"), EngineConfig(seed=3)):
        assert RunConfig(pools=(PoolConfig(engine=engine),)).fingerprint() != base
    assert load_config(None, ["method.sampling.assistant_agent.temperature=0.9"]).fingerprint() != base


def test_overrides_address_list_items_by_index():
    cfg = load_config(Path("configs/local.yaml"), ["pools.0.engine.cpu_threads_bind=auto", "pools.0.replicas=2"])
    assert cfg.pools[0].engine.cpu_threads_bind == "auto" and cfg.pools[0].replicas == 2
    assert cfg.pools[0].engine.model == "embedded"  # the rest of the pool is the file's
    assert load_config(None, ["pools.0.num_cpus=2"]).pools[0].num_cpus == 2  # the default pool
    with pytest.raises(ConfigError, match="not an index"):
        load_config(Path("configs/local.yaml"), ["pools.1.replicas=2"])


def test_gpus_per_replica_must_match_the_parallel_sizes():
    from button_ray.config import EngineConfig

    with pytest.raises(ValidationError, match="tensor_parallel_size x pipeline_parallel_size is 4: set num_gpus to 4"):
        PoolConfig(engine=EngineConfig(tensor_parallel_size=4))
    with pytest.raises(ValidationError, match=r"num_gpus \(1\) must equal .* \(8\)"):
        PoolConfig(num_gpus=1, engine=EngineConfig(tensor_parallel_size=4, extra={"pipeline_parallel_size": 2}))
    assert PoolConfig(num_gpus=8, engine=EngineConfig(tensor_parallel_size=4,
                                                      extra={"pipeline_parallel_size": 2})).num_gpus == 8
