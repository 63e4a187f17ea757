#!/usr/bin/env bash
# The latency model's accuracy on this machine: calibrates at 1 thread, then benchmarks TopFormer-T/S/B at 512x512
# (the calibration's networks) and held-out networks and sizes, does the same at 2 threads, and prints the
# markdown table of the README's performance section, predicted beside measured (bench's warm median). Run it on
# a quiet machine: calibration refuses to write a profile when runs vary too much.
#
# With --snapdragon it also regenerates specs/devices/snapdragon865.toml from the one-thread calibration and the
# published TopFormer latencies (toparch derive-device); regenerate reports/ afterwards (toparch report).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-20}
out=target/latency-model
mkdir -p "$out"
# TOPARCH names another binary (then nothing is built); MAX_SPREAD relaxes calibration's busy-machine check.
toparch=${TOPARCH:-target/release/toparch}
[[ -n "${TOPARCH:-}" ]] || cargo build --release --locked --quiet

# label | spec arguments | resolution | calibrated on it?
cases=(
    "TopFormer-T|--variant tiny|512|yes"
    "TopFormer-S|--variant small|512|yes"
    "TopFormer-B|--variant base|512|yes"
    "TopFormer-micro (tests/fixtures)|--spec tests/fixtures/topformer-micro.toml|512|no"
    "TopFormer-B Cityscapes|--variant base-cityscapes|512x1024|no"
    "TopFormer-S|--variant small|360x480|no"
    "TopFormer-T|--variant tiny|256|no"
    "held-out variant (benches/topformer-heldout.toml)|--spec benches/topformer-heldout.toml|512|no"
)
# Each thread count is calibrated right before its cases are measured, so the two lie minutes apart at most.
for threads in 1 2; do
    "$toparch" calibrate --threads "$threads" --name "local-${threads}t" --out "$out/device-${threads}t.toml" \
        --max-spread "${MAX_SPREAD:-1.25}" >&2
    if [[ "$threads" == 1 && "${1:-}" == "--snapdragon" ]]; then
        "$toparch" derive-device --from "$out/device-1t.toml" --out specs/devices/snapdragon865.toml >&2
    fi
    for case in "${cases[@]}"; do
        IFS='|' read -r label spec res calibrated <<< "$case"
        # shellcheck disable=SC2086 # the spec arguments are two words
        "$toparch" bench $spec --res "$res" --threads "$threads" --runs "$runs" --warmup 3 \
            --device "$out/device-${threads}t.toml" --format json |
            jq -c --arg name "$label" --arg cal "$calibrated" '. + {"label": $name, "calibrated": $cal}'
    done
done > "$out/results.jsonl"

cpu=$(grep -m1 '^cpu = ' "$out/device-1t.toml" | cut -d'"' -f2)
isa=$(grep -m1 '^isa = ' "$out/device-1t.toml" | cut -d'"' -f2)
echo "CPU: $cpu ($isa); $(date -u +%Y-%m-%d); $runs warm runs per case"
echo
echo "| network | input | threads | in calibration | measured median (ms) | predicted (ms) | error |"
echo "|---|---|--:|---|--:|--:|--:|"
jq -r '[.label, "\(.input[1])×\(.input[2])", .threads, .calibrated, .latency_ms.median, .predicted.latency_ms,
        100 * (.predicted.latency_ms / .latency_ms.median - 1)]
       | "| \(.[0]) | \(.[1]) | \(.[2]) | \(.[3]) | \(.[4] * 10 | round / 10) | \(.[5] * 10 | round / 10) | \(.[6] * 10 | round / 10) % |"' \
    "$out/results.jsonl"
jq -rs 'map(100 * (.predicted.latency_ms / .latency_ms.median - 1) | fabs) | "\nworst |error|: \(max * 10 | round / 10) %, mean |error|: \(add / length * 10 | round / 10) %"' \
    "$out/results.jsonl"
