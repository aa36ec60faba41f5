"""The Ray internals button_ray relies on, in one place, checked when a job starts.

Everything else uses public Ray and Ray Data APIs. Each use below says why no public
API does the job and was checked against :data:`CHECKED_RAY`; :func:`check` fails the
job at start-up (one :class:`RayInternalsChanged` sentence) if a newer Ray moved one,
instead of the job misbehaving silently (an unbounded leak, a starved source).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from button_ray.errors import UserError

#: The Ray release these uses were read against.
CHECKED_RAY = "2.60"

#: Ray task option (private) bounding how many objects a streaming-generator task may
#: have produced ahead of its consumer. Ray Data's default for its tasks is 2 blocks,
#: which capped the item source at 2 blocks per executor step (~20 items/s); no public
#: setting changes it per operator.
_BACKPRESSURE_OPTION = "_generator_backpressure_num_objects"


class RayInternalsChanged(UserError):
    """The installed Ray no longer has an internal this project relies on."""


def source_remote_args(window: int) -> dict[str, Any]:
    """Remote args letting the item source run ``window`` blocks ahead (block + metadata
    objects per block, hence twice)."""
    return {_BACKPRESSURE_OPTION: 2 * max(window, 1)}


def fuse_into_source(ds: Any, compute: Any, remote_args: dict[str, Any]) -> None:
    """Run the streaming repartition that ends ``ds`` inside the source task before it.

    Ray Data fuses a map with the streaming repartition after it only when both have
    the same remote args and compute, which ``repartition()`` does not take (Ray 2.60);
    unfused, every shard would pay a second task of 1 whole CPU (unschedulable when
    replicas hold every core). The plan's two last operators get the same args here.
    (A ``Datasource`` does not help: what its read tasks yield is merged into blocks of
    the dataset-wide ``target_max_block_size`` as well.)
    """
    from ray.data._internal.logical.operators import MapBatches, StreamingRepartition

    split = ds._logical_plan.dag
    expand = split.input_dependencies[0] if isinstance(split, StreamingRepartition) else None
    if not isinstance(expand, MapBatches):
        raise RayInternalsChanged(f"unexpected Ray Data plan after repartition(): {split!r}")
    for op in (expand, split):
        op.ray_remote_args.update(remote_args)
    object.__setattr__(split, "compute", compute)


def bounded_block_stats() -> type:
    """A Ray Data execution callback that keeps each operator's per-block stats short.

    Ray Data (2.60) appends one ``BlockStats`` per output block of every operator for the
    whole execution, and every 5 s sends them all, inside the iteration stats, to its
    stats actor. With a block per item per stage, the driver and that actor grew by
    ~10 KiB per item (the driver at 1 GiB after 55k items) and the stream slowed down.
    Only ``Dataset.stats()`` reads those lists; the last ``KEEP`` blocks per operator
    are kept for it. The callback hook is public in name only (``DataContext.
    custom_execution_callback_classes``); the list it trims is private.
    """
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    class BoundedBlockStats(ExecutionCallback):
        KEEP = 1000

        def on_execution_step(self, executor: Any) -> None:
            for op in getattr(executor, "_topology", None) or ():
                blocks = getattr(op, "_output_blocks_stats", None)
                if isinstance(blocks, list) and len(blocks) > 2 * self.KEEP:
                    del blocks[: len(blocks) - self.KEEP]

    return BoundedBlockStats


def _problems() -> list[str]:
    import ray
    import ray.data
    from ray._common import ray_option_utils

    problems = []
    if _BACKPRESSURE_OPTION not in ray_option_utils.task_options:
        problems.append(f"the task option {_BACKPRESSURE_OPTION} is gone")
    if not hasattr(ray.data.DataContext.get_current(), "custom_execution_callback_classes"):
        problems.append("DataContext.custom_execution_callback_classes is gone")
    try:
        from ray.data._internal.execution.execution_callback import ExecutionCallback
        from ray.data._internal.execution.operators.map_operator import MapOperator
        from ray.data._internal.execution.streaming_executor import StreamingExecutor
    except ImportError as exc:
        return [*problems, f"a Ray Data internal module moved ({exc})"]
    try:
        from ray.data._internal.logical.operators import MapBatches, StreamingRepartition
    except ImportError as exc:
        return [*problems, f"a Ray Data logical operator moved ({exc})"]
    for op in (MapBatches, StreamingRepartition):
        if not {"compute", "ray_remote_args"} <= {f.name for f in dataclasses.fields(op)}:
            problems.append(f"{op.__name__} no longer has the fields compute and ray_remote_args")
    if "self._logical_plan" not in inspect.getsource(ray.data.Dataset.__init__):
        problems.append("Dataset no longer keeps _logical_plan")
    if not hasattr(ExecutionCallback, "on_execution_step"):
        problems.append("ExecutionCallback.on_execution_step is gone")
    if "self._output_blocks_stats" not in inspect.getsource(MapOperator.__init__):
        problems.append("MapOperator no longer keeps _output_blocks_stats")
    if "self._topology" not in inspect.getsource(StreamingExecutor):
        problems.append("StreamingExecutor no longer keeps _topology")
    return problems


def check() -> None:
    """Fail loudly if the installed Ray lacks an internal used here."""
    import ray

    problems = _problems()
    if problems:
        raise RayInternalsChanged(
            f"Ray {ray.__version__} differs from Ray {CHECKED_RAY} where button_ray relies on its internals "
            f"({'; '.join(problems)}): install the Ray version pinned in pyproject.toml, or update "
            "button_ray/compat.py")
