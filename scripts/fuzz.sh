#!/usr/bin/env bash
# Fuzz the export readers and the diff for a bounded time per target.
#
#   scripts/fuzz.sh              # every target, 60 s each
#   scripts/fuzz.sh 300 diff     # one target, 5 minutes
#
# Needs a nightly toolchain (cargo fuzz builds with sanitizers); installs
# cargo-fuzz from crates.io when it is missing. Without nightly the same
# checks still run over the committed corpus in the normal test suite
# (tests/reliability_fuzz_corpus.rs).
#
# The committed seeds are in fuzz/corpus/<target>/; new inputs the fuzzer
# finds go to fuzz/corpus-new/<target>/ (not committed). Copy interesting
# ones into the seeds under a readable name with `git add -f` (the
# repository ignores fuzz/corpus). A crash is saved in
# fuzz/artifacts/<target>/; replay it with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(export_odata export_csv export_jsonl diff)
fi

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: no nightly toolchain (rustup toolchain install nightly);" >&2
    echo "         the corpus still runs as tests: cargo test --test reliability_fuzz_corpus" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd fuzz
for target in "${targets[@]}"; do
    echo "== ${target}: ${seconds} s"
    dict=()
    case "$target" in
        export_odata | export_jsonl | diff) dict=(-dict=dict/json.dict) ;;
        export_csv) dict=(-dict=dict/csv.dict) ;;
    esac
    mkdir -p "corpus-new/$target"
    cargo +nightly fuzz run "$target" "corpus-new/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 "${dict[@]}"
done
