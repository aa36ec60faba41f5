"""Prompt templates: the shipped ones at the repository's top level, a run's own
directory (``method.prompts_dir``, ``--prompts``), and the errors a bad one gives."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from button_ray import pipeline
from button_ray.bottom_up import atomic
from button_ray.cli import main
from button_ray.config import MethodConfig, RunConfig, load_config
from button_ray.errors import ConfigError
from button_ray.templates import SYSTEM_TEMPLATE, VARIABLES, load_templates, shipped_dir

REPO = Path(__file__).resolve().parents[1]
EDIT = ("Scenario: {{ scenario }}", "Scenario: at the lighthouse, {{ scenario }}")


def _copy(tmp_path: Path, name: str = "prompts") -> Path:
    return Path(shutil.copytree(shipped_dir(), tmp_path / name))


def _edit(directory: Path, name: str, old: str, new: str) -> None:
    path = directory / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_the_shipped_templates_are_the_repositorys_prompts_folder_and_all_registered() -> None:
    assert shipped_dir() == REPO / "prompts"
    assert {p.name for p in shipped_dir().iterdir()} == set(VARIABLES)
    templates = load_templates()
    assert set(templates.hashes()) == {*VARIABLES, SYSTEM_TEMPLATE}


def test_an_edited_prompt_in_a_copied_directory_changes_the_fingerprint_and_the_prompt(tmp_path) -> None:
    base = RunConfig()
    same = RunConfig(method=MethodConfig(prompts_dir=str(_copy(tmp_path, "same"))))
    # The path is not an output choice: the same prompts elsewhere resume the same run.
    assert same.fingerprint() == base.fingerprint()

    edited_dir = _copy(tmp_path)
    _edit(edited_dir, "atomic_task.j2", *EDIT)
    edited = load_config(None, [f"method.prompts_dir={edited_dir}"])
    assert edited.fingerprint() != base.fingerprint()
    changed = {n for n, h in edited.method.templates().hashes().items() if h != base.method.templates().hashes()[n]}
    assert changed == {"atomic_task.j2"}
    assert "at the lighthouse, tracking a parcel" in atomic.prompt("tracking a parcel", edited.method)
    assert "lighthouse" not in atomic.prompt("tracking a parcel", base.method)


def test_the_run_config_carries_the_drivers_templates_to_the_workers(tmp_path) -> None:
    directory = _copy(tmp_path)
    _edit(directory, "atomic_task.j2", *EDIT)
    method = RunConfig(method=MethodConfig(prompts_dir=str(directory))).resolved_method()
    shutil.rmtree(directory)  # a worker on another node has no such directory
    shipped = pickle.loads(pickle.dumps(method))
    assert "at the lighthouse, tracking a parcel" in atomic.prompt("tracking a parcel", shipped)


@pytest.mark.parametrize(
    ("name", "old", "new", "expected"),
    [
        ("functions.j2", "{{", "{{ (", "functions.j2 line "),
        ("tool_agent.j2", "{{ call }}", "{{ call }} {{ calll }}",
         "tool_agent.j2 uses calll, which the method does not pass"),
        ("user_agent.j2", None, None, "user_agent.j2 is missing"),
    ],
    ids=["syntax error", "unknown variable", "missing file"],
)
def test_a_bad_template_is_a_config_error_naming_the_file(tmp_path, name, old, new, expected) -> None:
    directory = _copy(tmp_path)
    if old is None:
        (directory / name).unlink()
    else:
        _edit(directory, name, old, new)
    with pytest.raises(ConfigError, match=expected) as exc:
        load_templates(directory)
    assert str(directory) in str(exc.value)


def test_a_missing_directory_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig(method=MethodConfig(prompts_dir=str(tmp_path / "nowhere"))).fingerprint()


def test_an_edit_after_loading_is_read_again(tmp_path) -> None:
    directory = _copy(tmp_path)
    before = load_templates(directory).hashes()["user_agent.j2"]
    (directory / "user_agent.j2").write_text("A different prompt for {{ task }}, longer than before.")
    assert load_templates(directory).hashes()["user_agent.j2"] != before


@pytest.mark.parametrize("command", ["generate", "scenarios"])
def test_the_cli_reports_a_bad_prompt_directory_in_one_line_before_ray_starts(tmp_path, monkeypatch, capsys,
                                                                             command) -> None:
    def no_ray(*_args, **_kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(pipeline, "init_ray", no_ray)
    monkeypatch.setattr(pipeline, "start_pools", no_ray)
    directory = _copy(tmp_path)
    _edit(directory, "scenario_expansion.j2", "{{ scenario }}", "{{ scenario }")
    out = tmp_path / "out"
    tail = ["--output", str(out)] if command == "generate" else ["--out", str(out / "pool.txt")]
    assert main([command, "--prompts", str(directory), *tail]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"prompt template {directory / 'scenario_expansion.j2'} line" in err
    assert not out.exists(), "the output was touched before the templates were checked"


def test_every_package_is_listed_for_the_wheel_and_the_prompts_ship_inside_it() -> None:
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.relative_to(REPO).parent.parts) for p in (REPO / "button_ray").rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {"button_ray.prompts"}
    assert setuptools["package-dir"] == {"button_ray.prompts": "prompts"}
    assert setuptools["package-data"]["button_ray.prompts"] == ["*.j2"]
