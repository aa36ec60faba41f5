"""The Ray internals the project relies on are all present in the installed Ray, and a
missing one stops a job at start-up with one sentence."""

from __future__ import annotations

import pytest

from button_ray import compat


def test_the_installed_ray_has_every_internal_relied_on() -> None:
    assert compat._problems() == []


def test_a_missing_internal_is_one_sentence_naming_it(monkeypatch) -> None:
    from ray._common import ray_option_utils

    monkeypatch.delitem(ray_option_utils.task_options, "_generator_backpressure_num_objects")
    with pytest.raises(compat.RayInternalsChanged, match="task option _generator_backpressure_num_objects is gone"):
        compat.check()
