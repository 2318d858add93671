"""Run every decoder and encoder benchmark and print the tables (Markdown).

python -m benchmarks.run            # full run (a few minutes)
python -m benchmarks.run --quick    # smaller payloads, fewer repetitions
"""

from __future__ import annotations

import platform
import sys
from importlib.metadata import version

from benchmarks import bench_decoder, bench_encoder, bench_integrations

PACKAGES = (
    "ssekit", "httpx", "httpx-sse", "sseclient-py", "launchdarkly-eventsource", "requests-sse",
    "openai", "sse-starlette", "uvicorn", "starlette",
)  # fmt: skip


def machine() -> list[str]:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    versions = ", ".join(f"{p} {version(p)}" for p in PACKAGES)
    return [
        f"Machine: {cpu}, {__import__('os').cpu_count()} cores; Python {platform.python_version()}",
        f"Packages: {versions}",
        "",
    ]


def main() -> None:
    argv = sys.argv[1:]
    print("\n".join(machine()))
    bench_decoder.main(argv)
    bench_encoder.main([a for a in argv if a == "--quick"])
    bench_integrations.main([a for a in argv if a == "--quick"])


if __name__ == "__main__":
    main()
