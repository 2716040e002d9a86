#!/usr/bin/env bash
# A short run of every fuzz target on its corpus (fuzz/corpus/<target>), the last step of
# `bash scripts/test`. Needs the nightly toolchain (`cargo +nightly`); cargo-fuzz is installed
# from crates.io when missing. Without nightly, says that fuzzing was skipped and why, and
# succeeds. A crash fails it and leaves the input under fuzz/artifacts/<target>/.
#
#   bash fuzz/smoke.sh            # every target, FUZZ_SECONDS (default 6) each
#   bash fuzz/smoke.sh form       # only these
#
# The build (libFuzzer instrumentation, no sanitizer: the crate forbids unsafe code) goes to
# FUZZ_TARGET_DIR, by default a cache outside the checkout, shared by every clone on the
# machine, so that CI's fresh clone rebuilds only what changed; never the main crate's target/.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-6}"
target_dir="${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/refresh-proxy/fuzz-target}"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "==> fuzzing skipped: no nightly toolchain (\`cargo +nightly\`; cargo fuzz needs it)"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  if ! cargo install cargo-fuzz --locked --quiet; then
    echo "==> fuzzing skipped: cargo-fuzz could not be installed"
    exit 0
  fi
fi

# `-max_len` per target: what the proxy reads of each input (a token form up to
# server.max_body_bytes; headers and tokens are small; documents a few KiB).
declare -A max_len=(
  [form]=65536 [basic_auth]=4096 [refresh_token]=4096 [config]=16384
  [discovery]=16384 [jwt_verify]=16384 [capture]=16384 [dpop_proof]=8192
  [client_cert]=32768 [store_answer]=16384
)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(form basic_auth refresh_token config discovery jwt_verify capture dpop_proof client_cert
    store_answer)
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
echo "==> cargo fuzz build (${target_dir})"
if ! cargo +nightly fuzz build --sanitizer none --target-dir "$target_dir" >"$scratch/build.log" 2>&1; then
  cat "$scratch/build.log" >&2
  echo "the fuzz targets do not build" >&2
  exit 1
fi
bin="$target_dir/x86_64-unknown-linux-gnu/release"
failed=()
for t in "${targets[@]}"; do
  [ -x "$bin/$t" ] || { echo "fuzz target $t was not built" >&2; exit 1; }
  mkdir -p "$scratch/$t" "artifacts/$t"
  # New inputs go to the scratch corpus (first directory); fuzz/corpus/<target> is only read.
  if "$bin/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -max_len="${max_len[$t]:-4096}" \
      -timeout=30 -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
      "$scratch/$t" "corpus/$t" >"$scratch/$t.log" 2>&1; then
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log")"
    echo "fuzz $t: ${runs:-?} runs in ${seconds}s, no crash"
  else
    echo "fuzz $t: FAILED" >&2
    tail -n 40 "$scratch/$t.log" >&2
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz targets that crashed: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
