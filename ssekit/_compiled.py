"""The compiled Decoder: ssekit/_cdecoder.c under the pure Decoder's name.

ssekit._decoder chooses this class as ``ssekit.Decoder`` at import when the
extension was built (``pip install`` compiles it wherever a C compiler is found)
and ``SSEKIT_PURE`` is not set; it then has the pure class's docstring. Same
class API, state, exceptions and ``max_event_size`` rule as the pure one, which
stays the reference: tests/test_core_implementations.py holds them to each other.

Importing this module raises ImportError when the extension is missing.
"""

from __future__ import annotations

from ._cdecoder import Decoder as _Core

__all__ = ("Decoder",)


class Decoder(_Core):
    """The compiled decoder; see ssekit/_decoder.py for the contract it keeps."""

    # No instance dict: the state lives in the C struct, read-only from Python.
    __slots__ = ()
