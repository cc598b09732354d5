"""The torchvision side of `detclip-bench dcn`: times torchvision.ops.deform_conv2d and a dense
torch conv2d of the same shape on the inputs the Rust side wrote.

    python torchvision_dcn.py INPUTS.safetensors OUT.json REPS cpu|cuda CASE[,CASE...]
"""

import json
import statistics
import sys
import time

import torch
import torchvision
from safetensors.torch import load_file
from torchvision.ops import deform_conv2d


def bench(fn, reps, sync):
    digest = fn(True)
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(False)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(times), "digest": digest}


def run(t, names, device, reps):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    res = {}
    for name in names:
        x, off, mask, w, b = (t[f"{name}_{k}"].to(device) for k in ("input", "offset", "mask", "weight", "bias"))

        def fwd(digest):
            with torch.no_grad():
                y = deform_conv2d(x, off, w, b, padding=(1, 1), mask=mask)
            return f"sum {y.double().sum().item():.6f}" if digest else ""

        def fwd_bwd(digest):
            xs = [v.detach().requires_grad_(True) for v in (x, off, mask, w, b)]
            y = deform_conv2d(xs[0], xs[1], xs[3], xs[4], padding=(1, 1), mask=xs[2])
            y.sum().backward()
            if not digest:
                return ""
            return f"|grad| {xs[0].grad.double().abs().sum().item():.6f} {xs[1].grad.double().abs().sum().item():.6f}"

        def dense_fwd(_):
            with torch.no_grad():
                torch.nn.functional.conv2d(x, w, b, padding=1)
            return ""

        def dense_fwd_bwd(_):
            xs, ws, bs = (v.detach().requires_grad_(True) for v in (x, w, b))
            torch.nn.functional.conv2d(xs, ws, bs, padding=1).sum().backward()
            return ""

        res[name] = {
            "fwd": bench(fwd, reps, sync),
            "fwd_bwd": bench(fwd_bwd, reps, sync),
            "dense_fwd": bench(dense_fwd, reps, sync),
            "dense_fwd_bwd": bench(dense_fwd_bwd, reps, sync),
        }
    return res


def main():
    inputs, out, reps, want, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5].split(",")
    t = load_file(inputs)
    devices = ["cpu"] + (["cuda"] if want == "cuda" and torch.cuda.is_available() else [])
    results = {d: run(t, names, d, reps) for d in devices}
    version = f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} CPU threads"
    if "cuda" in devices:
        version += f", {torch.cuda.get_device_name()}"
    with open(out, "w") as f:
        json.dump({"version": version, "devices": devices, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
