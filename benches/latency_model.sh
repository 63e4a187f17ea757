#!/usr/bin/env bash
# The latency model's accuracy on this machine: calibrates at 1 thread, then benchmarks TopFormer-T/S/B at 512x512
# (the calibration's networks) and held-out networks and sizes, does the same at 2 threads, and prints the
# markdown table of the README's performance section, predicted beside measured (bench's warm median). Run it on
# a quiet machine: calibration refuses to write a profile when runs vary too much.
#
# A shared VM can change speed between a calibration and the benches after it, which then decides every row. So
# the whole sequence runs ROUNDS times (default 3), each round's benches judged by that round's own calibration,
# and each row shows the median over rounds of the measured and predicted times and of the round's error, with
# every round's error beside it.
#
# With --snapdragon it also regenerates specs/devices/snapdragon865.toml from the first round's one-thread
# calibration and the published TopFormer latencies (toparch derive-device); regenerate reports/ afterwards
# (toparch report).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-20}
rounds=${ROUNDS:-3}
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
for round in $(seq "$rounds"); do
    for threads in 1 2; do
        device="$out/device-${threads}t-round${round}.toml"
        "$toparch" calibrate --threads "$threads" --name "local-${threads}t" --out "$device" \
            --max-spread "${MAX_SPREAD:-1.25}" >&2
        if [[ "$round" == 1 && "$threads" == 1 && "${1:-}" == "--snapdragon" ]]; then
            "$toparch" derive-device --from "$device" --out specs/devices/snapdragon865.toml >&2
        fi
        for order in "${!cases[@]}"; do
            IFS='|' read -r label spec res calibrated <<< "${cases[$order]}"
            # shellcheck disable=SC2086 # the spec arguments are two words
            "$toparch" bench $spec --res "$res" --threads "$threads" --runs "$runs" --warmup 3 \
                --device "$device" --format json |
                jq -c --arg name "$label" --arg cal "$calibrated" --argjson round "$round" --argjson order "$order" \
                    '. + {"label": $name, "calibrated": $cal, "round": $round, "order": $order}'
        done
    done
done > "$out/results.jsonl"

cpu=$(grep -m1 '^cpu = ' "$out/device-1t-round1.toml" | cut -d'"' -f2)
isa=$(grep -m1 '^isa = ' "$out/device-1t-round1.toml" | cut -d'"' -f2)
echo "CPU: $cpu ($isa); $(date -u +%Y-%m-%d); $runs warm runs per case; $rounds rounds"
echo
echo "| network | input | threads | in calibration | measured median (ms) | predicted (ms) | error | each round's error |"
echo "|---|---|--:|---|--:|--:|--:|---|"
# One row per case (medians over rounds, every round's error), then the worst and mean |median error|.
jq -rs '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def r1: . * 10 | round / 10;
  map(. + {error: (100 * (.predicted.latency_ms / .latency_ms.median - 1))})
  | group_by([.threads, .order])
  | map({first: .[0], error: (map(.error) | median), rows: .})
  | (.[] | .first as $first
     | "| \($first.label) | \($first.input[1])×\($first.input[2]) | \($first.threads) | \($first.calibrated) | \(.rows | map(.latency_ms.median) | median | r1) | \(.rows | map(.predicted.latency_ms) | median | r1) | \(.error | r1) % | \(.rows | sort_by(.round) | map(.error | r1 | tostring) | join(" / ")) |"),
    (map(.error | fabs) | "\nworst |median error|: \(max | r1) %, mean: \(add / length | r1) %")' \
    "$out/results.jsonl"
