#!/usr/bin/env bash
# Soak test (minutes, not in CI): the loadgen's mix scenario at a steady rate plus a set of
# held registered connections against a release server. Every few seconds it records the
# server's RSS, open descriptors and active connections; it fails if RSS grows more than 5%
# after warm-up, if descriptors leak, or if the server's counters disagree with the
# loadgen's.
# First, the stress run of hardening round 3 at full size: STRESS connections (default
# 100,000) on one worker, half resetting at random points, half registering and reading,
# on every engine (tests/misbehaviour.rs; `cargo test` runs it with 8,000); then the
# differential test against the Connection model on more clients and seeds.
#   scripts/soak.sh [DURATION_SECONDS=600] [RATE=2000] [HOLD=2000] [STRESS=100000]
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-600}; rate=${2:-2000}; hold=${3:-2000}; stress=${4:-100000}
IXN_STRESS_CONNECTIONS=$stress cargo test --release -q --test misbehaviour stress_half_reset
# The differential test (tests/differential.rs) at 20,000 clients per engine, on three seeds.
for seed in 1 2 3; do
  IXN_DIFF_SEED=$seed IXN_DIFF_CLIENTS=20000 cargo test --release -q --test differential
done
cargo build --release -q
dir=$(mktemp -d); trap 'kill $srv 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
mport=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
target/release/ixn-server --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:$mport \
  --registration-timeout 2s --error-disconnect-timeout 500ms 2>"$dir/server.log" &
srv=$!
sleep 1
metric() { curl -s "127.0.0.1:$mport/metrics" | awk -v k="$1" '$1==k {print $2}'; }
fds0=$(ls /proc/$srv/fd | wc -l)
target/release/ixn-loadgen --target 127.0.0.1:$port --scenario hold --connections "$hold" \
  --connect-rate 1000 --duration "$((dur + 20))s" -q --json "$dir/hold.json" >/dev/null 2>&1 &
hold_pid=$!
target/release/ixn-loadgen --target 127.0.0.1:$port --scenario mix --mix churn=90,invalid=5,silent=5 \
  --rate "$rate" --duration "${dur}s" --registration-timeout 2s --error-disconnect-timeout 500ms \
  --slack 200ms -q --reset-close --json "$dir/mix.json" >/dev/null 2>&1 &
mix_pid=$!
echo "t_s rss_kib fds active"
warm=""; max_after=0; t=0
while kill -0 $mix_pid 2>/dev/null; do
  sleep 5; t=$((t + 5))
  rss=$(awk '/VmRSS/ {print $2}' /proc/$srv/status); fds=$(ls /proc/$srv/fd | wc -l)
  echo "$t $rss $fds $(metric ixn_connections_active)"
  if [ "$t" -ge 60 ]; then
    [ -n "$warm" ] || warm=$rss
    [ "$rss" -gt "$max_after" ] && max_after=$rss
  fi
done
wait $mix_pid || { echo "FAIL: loadgen mix reported errors or failed"; exit 1; }
wait $hold_pid || { echo "FAIL: held connections were dropped"; exit 1; }
sleep 3
fds=$(ls /proc/$srv/fd | wc -l)
ok_mix=$(python3 -c "import json;d=json.load(open('$dir/mix.json'));print(d['ok_by_kind'].get('churn',0))")
ok_hold=$(python3 -c "import json;d=json.load(open('$dir/hold.json'));print(d['ok'])")
silent=$(python3 -c "import json;d=json.load(open('$dir/mix.json'));print(d['ok_by_kind'].get('silent',0))")
errors=$(python3 -c "import json;print(sum(json.load(open('$dir/' + f))['error_total'] for f in ('mix.json','hold.json')))")
reg_ok=$(metric 'ixn_registrations_total{result="ok"}'); expired=$(metric 'ixn_timer_expired_total{timer="registration"}')
echo "warm-up RSS ${warm} KiB, max after ${max_after} KiB; fds ${fds0} -> ${fds}"
echo "loadgen: churn ok ${ok_mix}, held ${ok_hold}, silent ${silent}, errors ${errors}; server: registrations ok ${reg_ok}, registration timeouts ${expired}"
fail=0
python3 -c "import sys; sys.exit(0 if $max_after <= $warm * 1.05 else 1)" || { echo "FAIL: RSS grew more than 5% after warm-up"; fail=1; }
[ "$fds" -le "$fds0" ] || { echo "FAIL: descriptors leaked ($fds0 -> $fds)"; fail=1; }
[ "${reg_ok%.*}" -eq $((ok_mix + ok_hold)) ] || { echo "FAIL: registrations disagree"; fail=1; }
[ "${expired%.*}" -eq "$silent" ] || { echo "FAIL: registration timeouts disagree"; fail=1; }
[ "$ok_hold" -eq "$hold" ] || { echo "FAIL: $ok_hold of $hold held connections lasted the run"; fail=1; }
[ "$errors" -eq 0 ] || { echo "FAIL: loadgen errors"; fail=1; }
[ $fail -eq 0 ] && echo "PASS"
exit $fail
