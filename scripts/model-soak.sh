#!/usr/bin/env bash
# A long run of the model checker (tests/model_check.rs): random histories
# of CRM edits, seller edits in Partner Center, faults and crashes, each
# checked against the sync model's invariants after a quiet cycle.
#
#   scripts/model-soak.sh                  # 50,000 histories, seeds from the clock
#   scripts/model-soak.sh 200000           # more
#   REFERRAL_SYNC_MODEL_SEED=1 scripts/model-soak.sh 1000   # what `cargo test` runs
#   REFERRAL_SYNC_MODEL_SEED=4711 scripts/model-soak.sh 1   # replay one history
#
# Release build, in process (the emulator as a library, kills as dropped
# cycle futures). A failure prints the failing seeds, the first histories
# in full, and the path of a file holding every failing history; replay one
# with REFERRAL_SYNC_MODEL_SEED=<seed> and 1 history.
set -euo pipefail

cd "$(dirname "$0")/.."
export REFERRAL_SYNC_MODEL_HISTORIES="${1:-${REFERRAL_SYNC_MODEL_HISTORIES:-50000}}"
export REFERRAL_SYNC_MODEL_SEED="${REFERRAL_SYNC_MODEL_SEED:-$(date +%s)}"
echo "model soak: ${REFERRAL_SYNC_MODEL_HISTORIES} histories from seed ${REFERRAL_SYNC_MODEL_SEED}" >&2
exec nice -n 10 cargo test --locked --release --test model_check -- \
    model_histories --exact --nocapture
