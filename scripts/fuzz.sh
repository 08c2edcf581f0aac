#!/usr/bin/env bash
# Runs each fuzz target for a bounded time, starting from the spec vectors in fuzz/seeds.
#   scripts/fuzz.sh [SECONDS per target, default 600]
# Needs cargo-fuzz (`cargo install cargo-fuzz`); RUSTC_BOOTSTRAP lets the stable toolchain
# accept the sanitizer flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-600}
for t in decode session tls; do
  mkdir -p "corpus/$t"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "corpus/$t" seeds -- \
    -max_total_time="$secs" -max_len=9000 -print_final_stats=1
done
