"""``ssekit --version`` and a ``--help`` that teaches (issue 19, section 6).

``ssekit proxy --help`` lists its options in groups; each ProxyConfig option lands in
exactly one, by its field's ``group`` metadata (a field without one goes to the
default group), so options added later are listed too.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys

import ssekit
from ssekit import _cli
from ssekit.proxy import _config
from ssekit.proxy._config import ProxyConfig

#: Options of ``ssekit proxy`` that are not ProxyConfig fields.
CLI_ONLY = (
    "--upstream", "--listen", "--workers", "--loop",
    "--api-key-env", "--client-token-env", "--admin-token-env",
)  # fmt: skip


def ssekit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ssekit", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "100"},
    )


def proxy_parser() -> argparse.ArgumentParser:
    parser = _cli._parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices["proxy"]


def option_groups() -> dict[str, list[str]]:
    """Each argument group's title -> the long option names it lists."""
    return {
        str(group.title): [
            name for action in group._group_actions for name in action.option_strings
        ]
        for group in proxy_parser()._action_groups
    }


def config_options() -> list[str]:
    return [
        "--" + f.name.replace("_", "-")
        for f in dataclasses.fields(ProxyConfig)
        if "help" in f.metadata
    ]


def test_version_prints_the_package_version() -> None:
    result = ssekit_cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"ssekit {ssekit.__version__}\n"


def test_every_proxy_option_is_listed_in_exactly_one_group() -> None:
    groups = option_groups()
    assert [title for title in groups if title not in ("positional arguments", "options")] == [
        group.value for group in _config.Group
    ]
    assert groups["options"] == ["-h", "--help"]  # nothing left ungrouped
    for option in (*config_options(), *CLI_ONLY):
        holding = [title for title, names in groups.items() if option in names]
        assert len(holding) == 1, (option, holding)


def test_a_field_without_a_group_goes_to_the_default_group() -> None:
    @dataclasses.dataclass
    class Later:
        new_option: int = dataclasses.field(default=1, metadata={"help": "h", "metavar": "N"})

    [field] = dataclasses.fields(Later)
    assert _cli.group_of(field) is _cli.DEFAULT_GROUP
    assert _cli.DEFAULT_GROUP in _config.Group


def test_groups_hold_the_options_an_operator_looks_for_there() -> None:
    groups = option_groups()
    assert "--connect-timeout" in groups["timeouts"]
    assert "--max-connections" in groups["limits"]
    assert "--api-key-env" in groups["keys and tokens"]
    assert "--resume-store" in groups["resume"]
    assert "--workers" in groups["operations"]
    assert "--upstream" in groups["forwarding"]


def test_proxy_help_shows_each_group_title() -> None:
    result = ssekit_cli("proxy", "--help")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    for group in _config.Group:
        assert f"{group.value}:" in lines


def test_proxy_help_examples_include_the_resume_store_and_workers() -> None:
    result = ssekit_cli("proxy", "--help")
    examples = result.stdout.partition("\nexamples:\n")[2]
    commands = " ".join(line for line in examples.splitlines() if line.startswith("  ssekit"))
    continued = examples.replace("\\\n", " ")
    assert "ssekit proxy" in commands
    assert "--resume-store redis://" in continued
    assert "--workers" in continued


def test_admin_prefix_help_names_the_streams_endpoint() -> None:
    [action] = [a for a in proxy_parser()._actions if "--admin-prefix" in a.option_strings]
    assert action.help is not None
    assert "PATH/streams/<id>" in action.help


def test_mock_upstream_help_lists_its_routes() -> None:
    result = ssekit_cli("mock-upstream", "--help")
    assert result.returncode == 0
    for route in ("/v1/chat/completions", "/v1/models", "/v1/events", "/demo"):
        assert route in result.stdout
    for parameter in ("count=", "cut_after=", "retry="):
        assert parameter in result.stdout
