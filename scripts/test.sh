#!/usr/bin/env bash
# Run the whole test suite (bounded hypothesis profile in CI), then replay the fuzz corpora.
# Exits non-zero on any failure, and when pytest collected no test (its exit status 5).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q "$@"
python fuzz/decode.py --replay --seconds "${FUZZ_SECONDS:-5}"
# HTTP framing against h11 and llhttp; KNOWN_BUGS in fuzz/http.py are reported, not failed.
python fuzz/http.py --replay --seconds "${FUZZ_SECONDS:-5}"
