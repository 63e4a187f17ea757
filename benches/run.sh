#!/usr/bin/env bash
# Times toparch's forward pass (criterion, warm) and onnxruntime on the same networks in one run, then cold
# starts of each network in fresh processes, and prints the markdown tables of benches/README.md with the CPU
# model and the vector instruction set the kernels dispatch to. Needs ../shared/ beside the repository and
# python3; installs onnxruntime and numpy with pip (user site) when they are missing.
#
# A shared VM's speed drifts by tens of percent from one minute to the next (and flips between a fast and a
# slow state within seconds), so both contenders run in ROUNDS alternating rounds (onnxruntime, then toparch;
# default 5) and each is summarised by the median of its round medians; the table also gives the ratio against
# onnxruntime's best round, which favours the peer. Within a round each network is timed over a similar
# stretch of seconds by both: criterion measures toparch for 8 s per case, onnxruntime runs ORT_RUNS times
# per case (default 300: 4-12 s). Each cold start runs COLD_PROCESSES times (default 9), each time in a fresh
# process, and the table reports the median process: a first run is a single sample, and one taken in a slow
# second against a warm median taken in fast ones reads 1.3-2x, so a median over few processes still varies.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared
target=${CARGO_TARGET_DIR:-target}
out=$target/bench-run
rounds=${ROUNDS:-5}
cold_processes=${COLD_PROCESSES:-9}
ort_runs=${ORT_RUNS:-300}
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ && "$cold_processes" =~ ^[1-9][0-9]*$ && "$ort_runs" =~ ^[1-9][0-9]*$ ]]; then
  echo "run.sh: ROUNDS, COLD_PROCESSES and ORT_RUNS must be whole numbers of at least 1" >&2
  exit 2
fi
rm -rf "$out"
mkdir -p "$out"

if ! python3 -c "import onnxruntime, numpy" 2>/dev/null; then
  echo "run.sh: installing onnxruntime and numpy with pip (--user)" >&2
  python3 -m pip install --quiet --user onnxruntime numpy
fi

# Build first, so that compiling does not overlap the timings.
cargo bench --locked --no-run --bench forward --bench cold

for round in $(seq "$rounds"); do
  echo "run.sh: round $round of $rounds" >&2
  python3 "$shared/bench/ort_latency.py" --threads 1 2 --runs "$ort_runs" --json > "$out/ort-$round.json"
  cargo bench --locked --bench forward -- --noplot
  cp -r "$target/criterion/forward" "$out/toparch-$round"
done
for _ in $(seq "$cold_processes"); do
  for variant in tiny small base; do
    for threads in 1 2; do
      cargo bench --locked -q --bench cold -- "$variant" "$threads"
    done
  done
done > "$out/cold.jsonl"

cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
OUT="$out" ROUNDS="$rounds" CPU="${cpu:-unknown CPU}" CORES="$(nproc 2>/dev/null || echo '?')" python3 - <<'PY'
import json, os, statistics
out, rounds = os.environ["OUT"], int(os.environ["ROUNDS"])
peer, ours = {}, {}
for r in range(1, rounds + 1):
    for row in json.load(open(os.path.join(out, f"ort-{r}.json"))):
        peer.setdefault((row["variant"], row["threads"]), []).append(row["median_ms"])
        version = row["onnxruntime"]
    for variant in ("tiny", "small", "base"):
        for threads in (1, 2):
            est = json.load(open(os.path.join(out, f"toparch-{r}", f"{variant}_512_threads={threads}", "new",
                                              "estimates.json")))
            ours.setdefault((variant, threads), []).append(est["median"]["point_estimate"] / 1e6)
cold = [json.loads(line) for line in open(os.path.join(out, "cold.jsonl")) if line.strip()]
print(f"CPU: {os.environ['CPU']}, {os.environ['CORES']} logical cores; toparch kernels: {cold[0]['isa']}\n")
print(f"Warm medians in {rounds} alternating rounds (onnxruntime {version}, then toparch); each side's figure is the "
      "median of its round medians.\n")
print("| network (512×512) | threads | toparch (ms) | onnxruntime (ms) | ratio | onnxruntime's best round (ms) "
      "| ratio to it | toparch rounds (ms) | onnxruntime rounds (ms) |")
print("|---|--:|--:|--:|--:|--:|--:|---|---|")
fmt = lambda values: " ".join(f"{v:.1f}" for v in values)
for variant in ("tiny", "small", "base"):
    for threads in (1, 2):
        o, p = ours[(variant, threads)], peer[(variant, threads)]
        mo, mp = statistics.median(o), statistics.median(p)
        print(f"| TopFormer-{variant[0].upper()} | {threads} | {mo:.1f} | {mp:.1f} | {mo / mp:.2f} | {min(p):.1f} "
              f"| {mo / min(p):.2f} | {fmt(o)} | {fmt(p)} |")
for variant in ("small", "base"):
    one, two = statistics.median(ours[(variant, 1)]), statistics.median(ours[(variant, 2)])
    print(f"\nTopFormer-{variant[0].upper()}: 2 threads {one / two:.2f}× as fast as 1", end="")
print("\n\nCold start, each case in fresh processes (the median process by first / warm, and every process's "
      "first / warm):\n")
print("| network (512×512) | threads | random weights (ms) | executor created (ms) | first run (ms) | warm median (ms) "
      "| first / warm | every process | peak RSS (MB) |")
print("|---|--:|--:|--:|--:|--:|--:|---|--:|")
for variant in ("tiny", "small", "base"):
    for threads in (1, 2):
        runs = sorted((c for c in cold if (c["variant"], c["threads"]) == (variant, threads)),
                      key=lambda c: c["first_run_ms"] / c["warm_median_ms"])
        c = runs[len(runs) // 2]
        every = " ".join(f"{r['first_run_ms'] / r['warm_median_ms']:.2f}" for r in runs)
        print(f"| TopFormer-{variant[0].upper()} | {threads} | {c['random_weights_ms']:.1f} | {c['create_ms']:.1f} "
              f"| {c['first_run_ms']:.1f} | {c['warm_median_ms']:.1f} | {c['first_run_ms'] / c['warm_median_ms']:.2f} "
              f"| {every} | {max(r['peak_rss_mb'] for r in runs):.0f} |")
PY
