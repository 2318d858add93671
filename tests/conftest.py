"""Shared test set-up: hypothesis profiles, the anyio backend, each Decoder implementation,
the HTTP/1.1 engine.

Profiles: ``ci`` (bounded, derandomised, no deadline or database; hypothesis
loads a profile named ``ci`` by itself when ``CI`` is set, so we own it),
``dev`` (the default locally) and ``long`` (soak: ``HYPOTHESIS_PROFILE=long``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import _servers
import pytest
from hypothesis import HealthCheck, settings
from implementations import IMPLEMENTATIONS

import ssekit
from ssekit._http._engine import ENGINES

settings.register_profile(
    "ci",
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "long", max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def each_decoder(request: pytest.FixtureRequest) -> Iterator[type]:
    """Run a whole module once per Decoder implementation (``pytestmark`` uses it).

    Meanwhile ``ssekit.Decoder`` is that implementation, so the tests and
    tests/splits.py build it as users do. Module-scoped: hypothesis tests take
    no function-scoped fixture.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ssekit, "Decoder", request.param)
        yield request.param


@pytest.fixture(params=ENGINES)
def http_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each HTTP/1.1 engine in turn (``--http``): a test that asks for this runs under both,
    and so does every test of a module marked ``pytest.mark.usefixtures("http_engine")``.

    The proxy and mock that ``_servers`` starts (``start_proxy``, ``start_mock``,
    ``proxy_config``, ``mock_config``) run on it, both sides of the proxy included.
    """
    engine: str = request.param
    monkeypatch.setattr(_servers, "HTTP_ENGINE", engine)
    return engine
