"""Prompt templates: one Jinja2 file per prompt the method sends, read from a directory.

The shipped templates are the repository's top-level ``prompts/`` (an installed wheel
carries them as ``button_ray/prompts/``). A run may read them from another directory,
e.g. a copy adapted to its model (``method.prompts_dir``, ``--prompts DIR``). Every
template the method renders must be there, parse, and use only the variables the
method passes it (:data:`VARIABLES`); otherwise loading raises a :class:`ConfigError`
naming the file, which the driver does before Ray starts. Each template's content hash
goes into the config fingerprint and the records' lineage; the directory's path does
not, so the same prompts at another path resume the same run.

Templates render with ``StrictUndefined``: a variable the method does not pass is an
error, not an empty string.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from button_ray.errors import ConfigError

#: Every template the method renders, and the variables it passes to each.
VARIABLES: dict[str, frozenset[str]] = {
    "atomic_task.j2": frozenset({"scenario", "max_words", "asker"}),
    "composition_sequential.j2": frozenset({"task"}),
    "composition_parallel_then_sequential.j2": frozenset({"task"}),
    "composition_filter.j2": frozenset({"composite_task", "subtasks", "strategy"}),
    "functions.j2": frozenset({"composite_task", "subtasks", "max_functions", "rich"}),
    "scenario_extraction.j2": frozenset({"conversation", "max_words"}),
    "scenario_expansion.j2": frozenset({"scenario", "max_words"}),
    "user_agent.j2": frozenset({"task"}),
    # Rendered twice: part="system" (the agent's instructions) and part="results".
    "assistant_agent.j2": frozenset(
        {"part", "system_prompt", "subtasks", "subtask_functions", "parallel", "independent", "results"}
    ),
    "tool_agent.j2": frozenset({"function", "call"}),
    "dialogue_judge.j2": frozenset({"dialogue", "scale_min", "scale_max"}),
}

#: BUTTON's system prompt (``docs/format.md``) is part of the output format, not a prompt
#: to adapt: records are validated against it, so it ships with the package and no prompt
#: directory replaces it. Its hash enters the fingerprint beside the templates'.
SYSTEM_TEMPLATE = "system_template.txt"

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir() -> Path:
    """The directory of the shipped templates: inside the package of an installed wheel,
    else the repository's ``prompts/`` (a source checkout or an editable install)."""
    for candidate in (_PACKAGE / "prompts", _PACKAGE.parent / "prompts"):
        # A file, not the folder alone: a checkout may keep an emptied folder's __pycache__.
        if (candidate / "atomic_task.j2").is_file():
            return candidate
    raise ConfigError(f"the shipped prompt templates are missing (looked in {_PACKAGE / 'prompts'} and "
                      f"{_PACKAGE.parent / 'prompts'}): reinstall button_ray")


@lru_cache(maxsize=1)
def system_template() -> str:
    """The text of BUTTON's system prompt template (``{tool_list}`` and ``{parallel}`` unfilled)."""
    return (_PACKAGE / "data" / SYSTEM_TEMPLATE).read_text(encoding="utf-8")


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Templates:
    """The prompt templates of one run: their texts, hashes and rendering.

    Pickles as its texts, so a config carrying it (:meth:`RunConfig.resolved_method`) gives
    every Ray worker the driver's templates, whatever the worker's own disk holds.
    """

    def __init__(self, texts: dict[str, str], directory: str) -> None:
        self.texts = dict(texts)
        self.directory = directory
        self._env = jinja2.Environment(
            loader=jinja2.DictLoader(self.texts),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            autoescape=False,
        )

    def render(self, name: str, **variables: Any) -> str:
        """Render template ``name`` (e.g. ``"atomic_task.j2"``) with strict variables."""
        return self._env.get_template(name).render(**variables).strip()

    def hashes(self) -> dict[str, str]:
        """``{file name: sha256[:16]}`` of every template and of BUTTON's system template."""
        return {**{name: _hash(text) for name, text in self.texts.items()}, SYSTEM_TEMPLATE: _hash(system_template())}

    def __getstate__(self) -> dict[str, Any]:
        return {"texts": self.texts, "directory": self.directory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["texts"], state["directory"])  # type: ignore[misc]


def load_templates(directory: str | Path | None = None) -> Templates:
    """The templates of ``directory`` (None: the shipped ones), checked; a
    :class:`ConfigError` naming the file if one is missing, unreadable, does not parse or
    uses a variable the method does not pass. A directory is read again when one of its
    files changes; the shipped templates, part of the installation, once per process."""
    if directory is None:
        return _shipped()
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise ConfigError(f"prompt directory {str(root)!r} (method.prompts_dir) does not exist")
    signature = []
    for name in VARIABLES:
        try:
            stat = (root / name).stat()
        except FileNotFoundError:
            raise ConfigError(f"prompt template {root / name} is missing: every template of the shipped "
                              f"prompts/ ({shipped_dir()}) must be in method.prompts_dir") from None
        signature.append((name, stat.st_mtime_ns, stat.st_size))
    return _read(str(root), tuple(signature))


@lru_cache(maxsize=1)
def _shipped() -> Templates:
    return _read(str(shipped_dir()), ())


@lru_cache(maxsize=16)
def _read(root: str, signature: tuple[tuple[str, int, int], ...]) -> Templates:
    # ``signature`` (names, mtimes, sizes) is only the cache key: an edited file is read again.
    parser = jinja2.Environment()
    texts = {}
    for name, passed in VARIABLES.items():
        path = Path(root) / name
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"prompt template {path} cannot be read: {exc}") from None
        try:
            used = meta.find_undeclared_variables(parser.parse(text))
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"prompt template {path} line {exc.lineno}: {exc.message}") from None
        unknown = sorted(used - passed)
        if unknown:
            raise ConfigError(f"prompt template {path} uses {', '.join(unknown)}, which the method does not pass "
                              f"it (it passes: {', '.join(sorted(passed))})")
        texts[name] = text
    return Templates(texts, root)
