"""Configuration: frozen pydantic models; YAML is only their serial form.

Every choice of the method is a field here, never a constant. :meth:`RunConfig.fingerprint`
hashes everything that changes outputs (method, models, prompts, seed, input) and
nothing that does not (replica counts, engine memory and batching, actor counts, the
output location and its shard size, the scenario-pool job's settings), so a resume may
move to a bigger cluster or lower an engine's memory share and keep its ids. Each model
classifies every one of its fields in ``OUTPUTS`` or ``NOT_OUTPUTS``
(``tests/test_config.py`` fails on a field that is in neither).
"""

from button_ray.config.base import Strength, _Config
from button_ray.config.content import JUDGE_SCALE, ContentConfig, JudgeConfig, TightConstraints
from button_ray.config.method import MethodConfig, StageSampling
from button_ray.config.run import (
    ITEM_SOURCE_CPUS,
    EngineConfig,
    OutputConfig,
    PoolConfig,
    RunConfig,
    RuntimeConfig,
    ScenarioConfig,
    load_config,
)

__all__ = [
    "ITEM_SOURCE_CPUS", "JUDGE_SCALE", "ContentConfig", "EngineConfig", "JudgeConfig", "MethodConfig", "OutputConfig",
    "PoolConfig", "RunConfig", "RuntimeConfig", "ScenarioConfig", "StageSampling", "Strength", "TightConstraints",
    "_Config", "load_config",
]
