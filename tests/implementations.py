"""The Decoder implementations the decoder tests run on: pure, and compiled when it was built.

Imported directly, whatever ``SSEKIT_PURE`` says, so both are always tested where both
exist. Where the extension was not built (no C compiler at install time) the compiled
runs skip, saying why; ``SSEKIT_REQUIRE_COMPILED=1`` (set by .ci/run wherever a compiler
is found) turns that into a failure in tests/test_core_implementations.py.
"""

from __future__ import annotations

import pytest

from ssekit._decoder import PureDecoder

try:
    from ssekit._compiled import Decoder as CompiledDecoder
except ModuleNotFoundError:  # not built
    CompiledDecoder = None  # type: ignore[assignment,misc]

NOT_BUILT = "the compiled decoder is not built (no C compiler when ssekit was installed)"

needs_compiled = pytest.mark.skipif(CompiledDecoder is None, reason=NOT_BUILT)

IMPLEMENTATIONS = [
    pytest.param(PureDecoder, id="pure"),
    pytest.param(CompiledDecoder, id="compiled", marks=needs_compiled),
]
