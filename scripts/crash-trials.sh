#!/usr/bin/env bash
# Kill `referral-sync sync`, the daemon in its startup cycle, or the daemon
# in a resync asked for with SIGHUP (by seed modulo 3) with SIGKILL at
# random moments, restart it, and check after every restart that nothing was
# lost or applied twice and that the store is sound
# (tests/reliability_crash.rs).
#
#   scripts/crash-trials.sh            # 100 trials, seeds from the clock
#   scripts/crash-trials.sh 500        # 500 trials
#   CRASH_SEED=1700000000 scripts/crash-trials.sh 1   # replay one trial
#
# Each trial kills three cycles (creation, updates, conflicts). A failure
# names its seed; run it again with CRASH_SEED=<seed> and 1 trial.
set -euo pipefail

cd "$(dirname "$0")/.."
export CRASH_TRIALS="${1:-${CRASH_TRIALS:-100}}"
if [[ -n "${CRASH_SEED:-}" ]]; then
    export CRASH_SEED
fi
# The test runs the emulator binary, which `--test` does not build.
cargo build --locked -p pc-emulator
exec cargo test --locked --test reliability_crash -- \
    --ignored crash_trials_many --exact --nocapture
