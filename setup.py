"""Build ssekit's optional compiled decoder, ssekit/_cdecoder.c (the metadata is in pyproject.toml).

Optional on purpose: without a C compiler or Python's headers, or when compiling fails
for any reason, the install still succeeds and ``ssekit.Decoder`` is the pure-Python
decoder (``ssekit.decoder_implementation`` says which one is in use). pip shows the
message below with ``pip install -v``.
"""

from __future__ import annotations

from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PURE = (
    "ssekit: the compiled decoder was not built ({error}); "
    "ssekit will use its pure-Python decoder (same results, slower)"
)


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: without the extension ssekit is pure Python."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all, no headers, a refused flag...
            print(PURE.format(error=exc))

    def build_extension(self, ext: Any) -> None:
        if self.compiler.compiler_type == "unix":  # gcc and clang; MSVC has its own flags
            ext.extra_compile_args = [*ext.extra_compile_args, "-Wall", "-Wextra"]
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(PURE.format(error=exc))


setup(
    ext_modules=[Extension("ssekit._cdecoder", ["ssekit/_cdecoder.c"], optional=True)],
    cmdclass={"build_ext": OptionalBuildExt},
)
