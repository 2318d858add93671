"""The benchmarks' targets, said once, and how a verdict on one reads.

A full run judges each target PASS or FAIL; ``benchmarks/README.md`` keeps the full
runs' tables and says which targets are not met and why. A ``--quick`` run uses
smaller payloads and fewer repetitions: its ratios move by more than the targets'
margins (a 75-event workload is dominated by per-call costs a 300-event one
amortises), so it never says PASS or FAIL, only whether the figure would meet the
target, marked indicative.
"""

from __future__ import annotations

__all__ = (
    "DECODER_VS_FASTEST",
    "DECODER_VS_HTTPX_SSE",
    "ENCODER_VS_SSE_STARLETTE",
    "LARGE_EVENTS_VS_HTTPX_SSE",
    "QUICK_NOTE",
    "judgement",
    "verdict",
)

#: The decoder against the fastest peer that decodes the workload right.
DECODER_VS_FASTEST = 1.3
#: The decoder against httpx-sse, on OpenAI-style streams.
DECODER_VS_HTTPX_SSE = 2.0
#: The decoder's MB/s against httpx-sse's on 64 KiB events.
LARGE_EVENTS_VS_HTTPX_SSE = 1.7
#: ssekit.encode against sse-starlette's encoder.
ENCODER_VS_SSE_STARLETTE = 3.0

#: Printed above a quick run's targets.
QUICK_NOTE = (
    "Quick run (--quick): smaller payloads, fewer repetitions. The figures are indicative "
    "only and the targets are judged on a full run (benchmarks/README.md)."
)


def judgement(met: bool, *, quick: bool) -> str:
    """``PASS`` or ``FAIL``; in a quick run ``indicative: met`` or ``indicative: not met``."""
    if quick:
        return f"indicative: {'met' if met else 'not met'}"
    return "PASS" if met else "FAIL"


def verdict(met: bool, target: str, *, quick: bool) -> str:
    """``[PASS >= 1.3x]`` / ``[FAIL >= 1.3x]``; in a quick run ``[indicative: met >= 1.3x]``."""
    return f"[{judgement(met, quick=quick)} {target}]"
