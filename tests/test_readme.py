"""Every ```python snippet in README.md runs and its asserts hold."""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_readme_has_snippets() -> None:
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("code", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_readme_snippet_runs(code: str) -> None:
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})


def test_readme_examples_import_only_public_names() -> None:
    # An example is what users copy: nothing private (a module or name starting with "_").
    private = []
    for code in SNIPPETS:
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(alias.name for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if names[0].split(".")[0] == "ssekit":
                private += [n for n in names if any(p.startswith("_") for p in n.split("."))]
    assert private == []


def test_the_run_command_installs_the_speed_extra_where_uvloop_installs() -> None:
    text = README.read_text(encoding="utf-8")
    [command] = [line for line in text.splitlines() if line.strip().endswith("ssekit proxy")]
    words = shlex.split(command)
    install = words[words.index("install") :]
    assert "-e" in install
    assert install[install.index("-e") + 1] == ".[speed]"
    # The extra installs everywhere: uvloop only where it builds (CPython, not Windows).
    pyproject = tomllib.loads((README.parent / "pyproject.toml").read_text(encoding="utf-8"))
    [uvloop] = [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["speed"]]
    assert uvloop.name == "uvloop"
    assert uvloop.marker is not None
    linux = {"sys_platform": "linux", "platform_python_implementation": "CPython"}
    assert uvloop.marker.evaluate(linux)
    assert not uvloop.marker.evaluate({**linux, "sys_platform": "win32"})
    assert not uvloop.marker.evaluate({**linux, "platform_python_implementation": "PyPy"})
