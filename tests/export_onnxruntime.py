"""Runs `toparch export` files in onnxruntime and compares them with the official PyTorch outputs and with
`toparch forward` (the README's measured agreement). Not part of `cargo test`, which checks the exports in
tract; run by hand after `cargo build`:

    pip install onnxruntime onnx numpy safetensors
    python3 tests/export_onnxruntime.py
"""
import pathlib, subprocess, sys, tempfile
import numpy as np, onnx, onnxruntime as ort
from safetensors.numpy import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOPARCH = ROOT / "target/debug/toparch"
FIXTURES = ROOT / "tests/fixtures"
SHARED = ROOT.parent / "shared/reference"
WORK = pathlib.Path(tempfile.mkdtemp())


def toparch(*args):
    run = subprocess.run([str(TOPARCH), *map(str, args)], capture_output=True, text=True)
    if run.returncode:
        sys.exit(run.stderr)


def export_and_run(spec, extra, x, output="logits"):
    model = WORK / "model.onnx"
    toparch("export", *spec, "--res", f"{x.shape[2]}x{x.shape[3]}", *extra, "--output", model)
    onnx.checker.check_model(onnx.load(model), full_check=True)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run([output], {"image": x})[0]


def forward(spec, weights, x):
    save_file({"input": x}, WORK / "input.safetensors")
    toparch("forward", *spec, *weights, "--input", WORK / "input.safetensors", "--output", WORK / "out.safetensors")
    return load_file(WORK / "out.safetensors")["logits"]


print(f"onnxruntime {ort.__version__}\n")
print("| model | export flags | vs official PyTorch | vs toparch forward | max abs logit |")
print("|---|---|---|---|---|")
micro = ["--spec", FIXTURES / "topformer-micro.toml"]
official = [
    ("micro 72×104, official weights", micro, FIXTURES / "micro/topformer-micro-seed5.pth",
     FIXTURES / "micro/topformer-micro-seed5-io.safetensors"),
    ("tiny 256×256, official weights", ["--variant", "tiny"], SHARED / "topformer-tiny-seed0.pth",
     SHARED / "topformer-tiny-seed0-io.safetensors"),
]
for name, spec, weights, io in official:
    if not io.exists():
        print(f"| {name} | skipped: {io} is missing | | | |")
        continue
    reference = load_file(io)
    x = reference["input"]
    ours = forward(spec, ["--weights", weights], x)
    for extra in ([], ["--fold-bn"], ["--opset", "17"]):
        y = export_and_run([*spec, "--weights", weights], extra, x)
        print(f"| {name} | {' '.join(extra) or '(none)'} | {np.abs(y - reference['logits']).max():.1e} "
              f"| {np.abs(y - ours).max():.1e} | {np.abs(reference['logits']).max():.2f} |")
rng = np.random.default_rng(0)
for variant in ["tiny", "small", "base", "base-cityscapes", "tiny-imagenet"]:
    for side in [512, 480]:
        x = rng.standard_normal((1, 3, side, side)).astype(np.float32)
        ours = forward(["--variant", variant], [], x)
        y = export_and_run(["--variant", variant], ["--fold-bn"], x)
        print(f"| {variant} {side}², random weights (seed 0) | --fold-bn | — | {np.abs(y - ours).max():.1e} "
              f"| {np.abs(ours).max():.2f} |")
x = rng.standard_normal((1, 3, 480, 480)).astype(np.float32)
classes = export_and_run(["--variant", "small"], ["--with-resize", "--argmax"], x, "classes")
resized = export_and_run(["--variant", "small"], ["--with-resize"], x)
print(f"\nsmall 480², --with-resize --argmax: {classes.dtype} {list(classes.shape)}, "
      f"equal to the argmax of the resized logits at {100 * (classes == resized.argmax(1)).mean():.2f} % of pixels")
