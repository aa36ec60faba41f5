"""Prompt templates: one file per prompt, shipped inside the package (works from a
source checkout and from an installed wheel alike).

Templates are Jinja2 with ``StrictUndefined`` (a missing variable is an error, not an
empty string). Each template's content hash goes into the records' lineage.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

import jinja2

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("button_ray", "prompts"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=False,
    autoescape=False,
)


def _names() -> list[str]:
    return sorted(
        p.name for p in resources.files("button_ray.prompts").iterdir() if p.name.endswith((".j2", ".txt"))
    )


@lru_cache(maxsize=None)
def template_text(name: str) -> str:
    """Raw text of a template file, e.g. ``template_text("system_template.txt")``."""
    return resources.files("button_ray.prompts").joinpath(name).read_text(encoding="utf-8")


def render(name: str, **variables: object) -> str:
    """Render a Jinja2 template (``*.j2``) with strict variables."""
    return _env.get_template(name).render(**variables).strip()


@lru_cache(maxsize=1)
def template_hashes() -> dict[str, str]:
    """``{file name: sha256[:16]}`` for every shipped template."""
    return {n: hashlib.sha256(template_text(n).encode()).hexdigest()[:16] for n in _names()}
