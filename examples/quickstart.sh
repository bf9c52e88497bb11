#!/usr/bin/env bash
# One real cycle of the sample export against a local Partner Center
# emulator: builds both binaries, starts the emulator seeded with two
# existing referrals, runs `referral-sync sync`, then shows what was sent
# and the referrals as the emulator now holds them.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bins
work=target/quickstart
rm -rf "$work" && mkdir -p "$work"
token="quickstart-$RANDOM$RANDOM"
(umask 077 && printf '%s\n' "$token" >"$work/token")

target/debug/pc-emulator --listen 127.0.0.1:0 --seed examples/emulator-seed.json \
    --token "$token" >"$work/emulator.out" 2>"$work/emulator.log" &
emulator=$!
trap 'kill $emulator 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q '^listening on ' "$work/emulator.out" 2>/dev/null && break
    sleep 0.1
done
base=$(sed -n 's/^listening on //p' "$work/emulator.out")
[ -n "$base" ] || { echo "the emulator did not start:"; cat "$work/emulator.log"; exit 1; }

export REFERRAL_SYNC__API__BASE_URL="$base/v1.0"
echo "== referral-sync sync --dry-run (the plan)"
target/debug/referral-sync --config examples/referral-sync.toml sync --dry-run || true
echo
echo "== referral-sync sync (for real)"
status=0
target/debug/referral-sync --config examples/referral-sync.toml sync || status=$?
echo
echo "== what the emulator received (method, path, status, body)"
curl -s "$base/_admin/requests" | python3 -c '
import json, sys
for r in json.load(sys.stdin)["value"]:
    body = "" if r.get("body") is None else json.dumps(r["body"])
    match = " If-Match " + r["if_match"] if r.get("if_match") else ""
    print("%-6s %s -> %s%s %s" % (r["method"], r["path"], r["status"], match, body[:300]))
'
echo
echo "== the referrals now in the emulator (externalReferenceId, status, dealValue, name)"
curl -s "$base/_admin/referrals" | python3 -c '
import json, sys
for r in json.load(sys.stdin)["value"]:
    d = r.get("details", {})
    print(r.get("externalReferenceId"), r.get("status"), r.get("substatus"), d.get("dealValue"), d.get("currency"), "|", r.get("name"))
'
echo
echo "== referral-sync status"
target/debug/referral-sync --config examples/referral-sync.toml status
exit $status
