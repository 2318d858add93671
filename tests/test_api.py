"""The public surface: exports, import weight, reprs."""

from __future__ import annotations

import subprocess
import sys
import types

import ssekit


def test_all_lists_exactly_the_public_names() -> None:
    # Subpackages (ssekit.proxy, ssekit.client) appear once imported; they are not re-exports.
    public = {
        name
        for name, value in vars(ssekit).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(ssekit.__all__) == public
    for name in ssekit.__all__:
        assert getattr(ssekit, name) is not None


def test_importing_ssekit_loads_neither_anyio_nor_h11() -> None:
    code = "import sys, ssekit; print(sorted(m for m in ('anyio', 'h11') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_reprs_and_tracebacks_read_ssekit_names() -> None:
    assert ssekit.Decoder.__module__ == "ssekit"
    assert repr(ssekit.Event(data="x")) == ("Event(data='x', event='message', id='', retry=None)")
    assert ssekit.LimitExceeded.__module__ == "ssekit"


def test_exception_families() -> None:
    assert issubclass(ssekit.LimitExceeded, ssekit.SSEError)
    assert issubclass(ssekit.EncodeError, ValueError)
    assert issubclass(ssekit.UpstreamError, ssekit.ProxyError)
    assert issubclass(ssekit.ConfigError, ssekit.ProxyError)
    assert issubclass(ssekit.StreamIncomplete, ssekit.OpenAIStreamError)


def test_events_are_immutable() -> None:
    event = ssekit.Event(data="x")
    try:
        event.data = "y"  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("Event must be frozen")
    assert event.data == "x"
