"""The documents point only at what the repository holds: the README's layout table names
every module and folder of the package, and docs/architecture.md cites existing files and
tests."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "button_ray"


def _readme_layout() -> str:
    readme = (REPO / "README.md").read_text()
    return readme[readme.index("## Layout"):readme.index("## Configuration")]


def test_the_readme_layout_table_names_every_module_and_folder() -> None:
    table = _readme_layout()
    modules = {f"button_ray/{p.name}" for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    # A folder git has emptied may live on in a checkout as a bare __pycache__.
    folders = {f"button_ray/{p.name}/" for p in PACKAGE.iterdir()
               if p.is_dir() and any(c.name != "__pycache__" for c in p.iterdir())}
    assert [name for name in sorted(modules | folders) if f"`{name}`" not in table] == []
    for path in re.findall(r"`((?:button_ray|prompts|configs|docs|scripts|tests|cluster|benchmarks)[\w./]*)`", table):
        assert (REPO / path).exists(), path


def test_the_architecture_cites_files_and_tests_that_exist() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    cited = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)
    assert cited
    for path, test in cited:
        source = (REPO / path).read_text()
        assert not test or re.search(rf"^(async )?def {test}\(", source, re.MULTILINE), f"{path}::{test}"
    modules = re.findall(r"^\| `([\w/]+(?:\.py|/))`", text, re.MULTILINE)
    assert modules and [m for m in modules if not (PACKAGE / m).exists()] == []
