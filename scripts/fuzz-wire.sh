#!/usr/bin/env bash
# Coverage-guided fuzzing of the data-plane frame and message decoders with libFuzzer (Swift's
# -sanitize=fuzzer on Linux), for a fixed time, growing the committed corpus.
#
#   scripts/fuzz-wire.sh [SECONDS]     fuzz for SECONDS (default 120), then merge new inputs
#                                      into Fuzz/Corpus/wire (minimised)
# A crash leaves its input as crash-* in the working folder; add it to the corpus once fixed:
# the suite (WireCorpusTests) replays every corpus file through the same decoders.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN="${1:-120}"
swift build -c release --package-path Fuzz --sanitize=fuzzer --product hkv-fuzz-wire
BIN="$(swift build -c release --package-path Fuzz --sanitize=fuzzer --show-bin-path)/hkv-fuzz-wire"
NEW="$(mktemp -d)"
trap 'rm -rf "$NEW"' EXIT
"$BIN" -max_total_time="$SECONDS_TO_RUN" -max_len=4096 -print_final_stats=1 "$NEW" Fuzz/Corpus/wire
"$BIN" -merge=1 -max_len=4096 Fuzz/Corpus/wire "$NEW"
echo "corpus: $(ls Fuzz/Corpus/wire | wc -l) files"
