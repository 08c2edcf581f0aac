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
cargo build -q -p ixnctl --bin ixnctl

step "1. the seccomp profile"
python3 scripts/seccomp-profile.py --check || fail "deploy/seccomp/ixn-server.json is stale"
grep -q '"io_uring_setup"' /usr/share/containers/seccomp.json \
  && fail "the runtime's default profile allows io_uring: nothing to test against"

step "2. the image"
IXN_BINARY=target/debug/ixn-server IXNCTL_BINARY=target/debug/ixnctl \
  scripts/image.sh ixn-server:test >/dev/null
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
grep -q 'deploy/seccomp/ixn-server.json' <<<"$out" || fail "the message names no fix: $out"
c=$(port); m=$(port)
"${P[@]}" run -d --rm --name ixn-test-default "${LIMITS[@]}" --network host ixn-server:test \
  --listen "127.0.0.1:$c" --metrics-listen "127.0.0.1:$m" >/dev/null
trap '"${P[@]}" rm -f -t 0 ixn-test-default ixn-test-ours >/dev/null 2>&1 || true' EXIT
wait_ready "$m" 200 || fail "auto under the default profile never became ready"
register "$c" "the epoll engine"
# ixnctl ships in the image, with its man page and completions.
"${P[@]}" exec ixn-test-default /usr/local/bin/ixnctl --metrics "http://127.0.0.1:$m" status \
  >/dev/null || fail "ixnctl status in the container did not say ready"
cid=$("${P[@]}" create ixn-server:test)
for f in /usr/local/share/man/man1/ixnctl.1 /usr/share/bash-completion/completions/ixnctl; do
  "${P[@]}" cp "$cid:$f" - | tar -tf - >/dev/null 2>&1 || fail "the image has no $f"
done
"${P[@]}" rm "$cid" >/dev/null
[ "$(metric "$m" 'ixn_engine_info{engine="epoll"}')" = 1 ] || fail "auto did not run epoll"
# Read whole, then searched: `logs | grep -q` under pipefail fails when grep stops
# reading before podman has written everything (SIGPIPE).
logs=$("${P[@]}" logs ixn-test-default 2>&1)
grep -q 'running the epoll engine' <<<"$logs" || fail "no warning about the fallback: $logs"
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

step "5. podman kube play: the Deployment"
# What podman 4.3 cannot take from deploy/kubernetes is adapted, and nothing else: host
# networking (so no ports), no probes (podman turns them into in-container curl checks),
# the TLS Secret as a host directory, the seccomp profile by its older annotation, a short
# drain, and one replica on ephemeral ports. The ConfigMap, image, arguments, security
# context and preStop command are the manifests' own.
kp=$(mktemp -d)
trap '"${P[@]}" kube down "$kp/play.yaml" >/dev/null 2>&1 || true; rm -rf "$kp"' EXIT
mkdir -p "$kp/seccomp" "$kp/tls"
cp deploy/seccomp/ixn-server.json "$kp/seccomp/"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=ixn-server -keyout "$kp/tls/tls.key" -out "$kp/tls/tls.crt" 2>/dev/null
chmod 0644 "$kp/tls/"*
c=$(port); t=$(port); m=$(port)
python3 - "$kp" "$c" "$t" "$m" <<'PY'
import sys, yaml
kp, c, t, m = sys.argv[1:]
load = lambda f: [d for d in yaml.safe_load_all(open(f"deploy/kubernetes/{f}")) if d]
cm, dep = load("configmap.yaml")[0], load("deployment.yaml")[0]
pod = dep["spec"]["template"]
dep["spec"]["replicas"] = 1
pod["metadata"]["annotations"] = {
    "seccomp.security.alpha.kubernetes.io/pod": "localhost/ixn-server.json"}
ctr = pod["spec"]["containers"][0]
ctr["image"] = "localhost/ixn-server:test"
for k in ["ports", "startupProbe", "readinessProbe", "livenessProbe"]:
    ctr.pop(k)
env = {"IXN_LISTEN": f"127.0.0.1:{c}", "IXN_METRICS_LISTEN": f"127.0.0.1:{m}"}
for e in ctr["env"]:
    e["value"] = env.get(e["name"], e["value"])
short = {"--lame-duck-grace": "1s", "--lame-duck-duration": "2s",
         "--tls-listen": f"127.0.0.1:{t}"}
ctr["args"] = [a for a in ctr["args"] if not a.startswith("--proxy")]
ctr["args"] = [f"{a.split('=')[0]}={short[a.split('=')[0]]}" if a.split("=")[0] in short
               else a for a in ctr["args"]]
for v in pod["spec"]["volumes"]:
    if "secret" in v:
        del v["secret"]
        v["hostPath"] = {"path": f"{kp}/tls", "type": "Directory"}
yaml.safe_dump_all([cm, dep], open(f"{kp}/play.yaml", "w"))
PY
printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n' \
  "$(ulimit -Hn)" "$(ulimit -Hn)" > "$kp/containers.conf"
CONTAINERS_CONF="$kp/containers.conf" podman kube play --network host \
  --seccomp-profile-root "$kp/seccomp" "$kp/play.yaml" >/dev/null
wait_ready "$m" 200 || fail "the pod never became ready"
[ "$(metric "$m" 'ixn_engine_info{engine="io_uring_v2"}')" = 1 ] \
  || fail "the pod does not run io_uring under deploy/seccomp/ixn-server.json"
register "$c" "the pod"
# Clients held through the pod until its drain ends them.
"$LOADGEN" --target "127.0.0.1:$c" --scenario hold --connections 20 --duration 60s \
  --threads 1 -q --json "$kp/hold.json" >/dev/null 2>&1 &
held=$!
for _ in $(seq 100); do
  [ "$(metric "$m" ixn_clients_registered)" = 20 ] && break
  sleep 0.1
done
[ "$(metric "$m" ixn_clients_registered)" = 20 ] || fail "the held clients did not register"
# The preStop hook, as the kubelet runs it.
ctr=$("${P[@]}" ps --format '{{.Names}}' | grep ixn-server-pod)
hook=$(echo "$ctr" | head -1)
"${P[@]}" exec "$hook" /usr/local/bin/ixn-server --signal-drain 1 >/dev/null 2>&1 &
wait_ready "$m" 503 || fail "/ready did not turn 503 on the preStop drain"
wait "$held" || true
python3 - "$kp/hold.json" <<'PY' || fail "the held clients were not drained with EventError 11"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["errors"].get("server_shutting_down") == 20, d["errors"]
PY

step "ok"
