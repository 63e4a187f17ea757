#!/usr/bin/env bash
# Times toparch's forward pass (criterion) and onnxruntime on the same networks in one run, and prints the
# markdown table of benches/README.md with the ratios. Needs ../shared/ beside the repository and
# `pip install onnxruntime numpy`.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared

python3 "$shared/bench/ort_latency.py" --threads 1 2 --runs 30 --json > target/ort-before.json
cargo bench --locked --bench forward -- --noplot
python3 "$shared/bench/ort_latency.py" --threads 1 2 --runs 30 --json > target/ort-after.json

python3 - <<'PY'
import json, os
rows = {}
for path in ("target/ort-before.json", "target/ort-after.json"):
    for r in json.load(open(path)):
        rows.setdefault((r["variant"], r["threads"]), []).append(r["median_ms"])
        version = r["onnxruntime"]
print(f"| network (512×512) | threads | toparch median (ms) | onnxruntime {version} median (ms) | ratio |")
print("|---|--:|--:|--:|--:|")
for variant in ("tiny", "small", "base"):
    for threads in (1, 2):
        est = json.load(open(f"target/criterion/forward/{variant}_512_threads={threads}/new/estimates.json"))
        ours = est["median"]["point_estimate"] / 1e6
        # onnxruntime runs before and after the Rust bench; its better median is taken, favouring the peer.
        peer = min(rows[(variant, threads)])
        print(f"| TopFormer-{variant[0].upper()} | {threads} | {ours:.1f} | {peer:.1f} | {ours / peer:.2f} |")
PY
