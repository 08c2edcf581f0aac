#!/usr/bin/env python3
"""Writes deploy/seccomp/ixn-server.json: the container runtime's default seccomp profile
plus exactly the io_uring calls ixn-server makes (io_uring_setup, io_uring_enter,
io_uring_register), and nothing else.

    scripts/seccomp-profile.py [DEFAULT_PROFILE] [OUT]

DEFAULT_PROFILE defaults to /usr/share/containers/seccomp.json (Debian's
golang-github-containers-common, which podman and CRI-O use). `--check` compares OUT with
what it would write and exits 1 if they differ (tests/container.sh runs it).
"""
import json
import sys

IO_URING = ["io_uring_enter", "io_uring_register", "io_uring_setup"]


def profile(default):
    p = json.loads(json.dumps(default))
    for rule in p["syscalls"]:
        if rule.get("action") == "SCMP_ACT_ALLOW":
            rule["names"] = [n for n in rule["names"] if n not in IO_URING]
    p["syscalls"] = [r for r in p["syscalls"] if r["names"]]
    p["syscalls"].append({
        "names": IO_URING,
        "action": "SCMP_ACT_ALLOW",
        "comment": "ixn-server: its io_uring engines (docs/OPERATIONS.md, Kubernetes)",
    })
    return p


def main(argv):
    check = "--check" in argv
    args = [a for a in argv[1:] if a != "--check"]
    src = args[0] if args else "/usr/share/containers/seccomp.json"
    out = args[1] if len(args) > 1 else "deploy/seccomp/ixn-server.json"
    with open(src) as f:
        text = json.dumps(profile(json.load(f)), indent=2) + "\n"
    if check:
        with open(out) as f:
            if f.read() != text:
                print(f"{out} is not {src} plus the io_uring calls: run {argv[0]}", file=sys.stderr)
                return 1
        return 0
    with open(out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
