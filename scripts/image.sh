#!/usr/bin/env bash
# Builds the ixn-server container image from scratch, pulling no base image: the release
# binaries (ixn-server, and ixnctl with its shell completions and man page), the shared
# libraries they link (as ldd lists them), and a passwd entry for the non-root user it
# runs as (65532).
#   scripts/image.sh [TAG]        default TAG: ixn-server:<version>, also tagged :latest
# Environment:
#   IXN_BINARY=PATH        use this binary instead of building the release one
#   IXNCTL_BINARY=PATH     the same for ixnctl
#   IXN_IMAGE_ARCHIVE=FILE also write the image as an OCI archive (podman load / ctr import)
# Needs buildah (Debian: apt-get install buildah).
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
tag=${1:-ixn-server:$version}
bin=${IXN_BINARY:-}
if [ -z "$bin" ]; then
  cargo build --release -p ixn-server --bin ixn-server
  bin=target/release/ixn-server
fi
ctl=${IXNCTL_BINARY:-}
if [ -z "$ctl" ]; then
  cargo build --release -p ixnctl --bin ixnctl
  ctl=target/release/ixnctl
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$bin" "$root/usr/local/bin/ixn-server"
install -D -m 0755 "$ctl" "$root/usr/local/bin/ixnctl"
# The release profile keeps line tables for profiling; the image does not need them.
strip --strip-debug "$root/usr/local/bin/ixn-server" "$root/usr/local/bin/ixnctl"
# ixnctl's completions and man page, generated from its command-line definition.
"$ctl" completions bash | install -D -m 0644 /dev/stdin "$root/usr/share/bash-completion/completions/ixnctl"
"$ctl" completions zsh | install -D -m 0644 /dev/stdin "$root/usr/share/zsh/vendor-completions/_ixnctl"
"$ctl" completions fish | install -D -m 0644 /dev/stdin "$root/usr/share/fish/vendor_completions.d/ixnctl.fish"
"$ctl" man | install -D -m 0644 /dev/stdin "$root/usr/local/share/man/man1/ixnctl.1"
# The dynamic loader and every library the binaries link, at the paths they look for them.
for lib in $( (ldd "$bin"; ldd "$ctl") | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u); do
  install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
mkdir -p "$root/etc/ixn-server" "$root/tmp"
chmod 1777 "$root/tmp"
echo 'ixn:x:65532:65532:ixn-server:/nonexistent:/sbin/nologin' > "$root/etc/passwd"
echo 'ixn:x:65532:' > "$root/etc/group"
# mktemp made the root 0700: the non-root user must be able to walk it.
chmod -R go+rX "$root"
ctr=$(buildah from scratch)
trap 'rm -rf "$root"; buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah copy --quiet "$ctr" "$root" / >/dev/null
# Inside a container the listeners must face the pod's network, not its loopback.
buildah config \
  --entrypoint '["/usr/local/bin/ixn-server"]' --cmd '' \
  --user 65532:65532 --workingdir / \
  --port 7400/tcp --port 7401/tcp --port 9464/tcp --port 9465/tcp \
  --env IXN_LISTEN=0.0.0.0:7400 --env IXN_METRICS_LISTEN=0.0.0.0:9464 \
  --env IXN_LOG_FORMAT=json \
  --label org.opencontainers.image.title=ixn-server \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.description="IXN/1 registration server" \
  --stop-signal SIGTERM \
  "$ctr"
buildah commit --quiet "$ctr" "$tag" >/dev/null
case "$tag" in
  *:"$version") buildah tag "$tag" "${tag%:*}:latest" ;;
esac
if [ -n "${IXN_IMAGE_ARCHIVE:-}" ]; then
  buildah push --quiet "$tag" "oci-archive:$IXN_IMAGE_ARCHIVE:$tag"
fi
echo "$tag"
