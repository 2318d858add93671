#!/usr/bin/env bash
# Run the whole test suite (bounded hypothesis profile in CI), then replay the fuzz corpus.
# Exits non-zero on any failure, and when pytest collected no test (its exit status 5).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q "$@"
python fuzz/decode.py --replay --seconds "${FUZZ_SECONDS:-5}"
