#!/usr/bin/env bash
# Times toparch's forward pass (criterion, warm) and onnxruntime on the same networks in one run, then a cold
# start of each network in a fresh process, and prints the markdown tables of benches/README.md with the CPU
# model and the vector instruction set the kernels dispatch to. Needs ../shared/ beside the repository and
# python3; installs onnxruntime and numpy with pip (user site) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared
out=target/bench-run
mkdir -p "$out"

if ! python3 -c "import onnxruntime, numpy" 2>/dev/null; then
  echo "run.sh: installing onnxruntime and numpy with pip (--user)" >&2
  python3 -m pip install --quiet --user onnxruntime numpy
fi

# Build first, so that compiling does not overlap the onnxruntime timings.
cargo bench --locked --no-run --bench forward --bench cold

python3 "$shared/bench/ort_latency.py" --threads 1 2 --runs 30 --json > "$out/ort-before.json"
cargo bench --locked --bench forward -- --noplot
python3 "$shared/bench/ort_latency.py" --threads 1 2 --runs 30 --json > "$out/ort-after.json"
for variant in tiny small base; do
  for threads in 1 2; do
    cargo bench --locked -q --bench cold -- "$variant" "$threads"
  done
done > "$out/cold.jsonl"

cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
OUT="$out" CPU="${cpu:-unknown CPU}" CORES="$(nproc 2>/dev/null || echo '?')" python3 - <<'PY'
import json, os
out = os.environ["OUT"]
rows = {}
for name in ("ort-before.json", "ort-after.json"):
    for r in json.load(open(os.path.join(out, name))):
        rows.setdefault((r["variant"], r["threads"]), []).append(r["median_ms"])
        version = r["onnxruntime"]
cold = [json.loads(line) for line in open(os.path.join(out, "cold.jsonl")) if line.strip()]
print(f"CPU: {os.environ['CPU']}, {os.environ['CORES']} logical cores; toparch kernels: {cold[0]['isa']}\n")
print(f"| network (512×512) | threads | toparch median (ms) | onnxruntime {version} median (ms) | ratio |")
print("|---|--:|--:|--:|--:|")
for variant in ("tiny", "small", "base"):
    for threads in (1, 2):
        est = json.load(open(f"target/criterion/forward/{variant}_512_threads={threads}/new/estimates.json"))
        ours = est["median"]["point_estimate"] / 1e6
        # onnxruntime runs before and after the Rust bench; its better median is taken, favouring the peer.
        peer = min(rows[(variant, threads)])
        print(f"| TopFormer-{variant[0].upper()} | {threads} | {ours:.1f} | {peer:.1f} | {ours / peer:.2f} |")
print("\nCold start, each case in a fresh process:\n")
print("| network (512×512) | threads | random weights (ms) | executor created (ms) | first run (ms) | warm median (ms) "
      "| first / warm | peak RSS (MB) |")
print("|---|--:|--:|--:|--:|--:|--:|--:|")
for c in cold:
    print(f"| TopFormer-{c['variant'][0].upper()} | {c['threads']} | {c['random_weights_ms']:.1f} | {c['create_ms']:.1f} "
          f"| {c['first_run_ms']:.1f} | {c['warm_median_ms']:.1f} | {c['first_run_ms'] / c['warm_median_ms']:.2f} "
          f"| {c['peak_rss_mb']:.0f} |")
PY
