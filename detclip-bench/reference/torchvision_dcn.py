"""The torchvision side of `detclip-bench dcn`: times torchvision.ops.deform_conv2d and a dense
torch conv2d of the same shape on the inputs the Rust side wrote.

    python torchvision_dcn.py INPUTS.safetensors OUT.json REPS cpu|cuda CASE[,CASE...]
"""

import sys

import torch
from safetensors.torch import load_file

from common import bench, devices, syncer, write
from torchvision.ops import deform_conv2d


def run(t, names, device, reps):
    sync = syncer(device)
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
    devs = devices(want)
    write(out, devs, {d: run(t, names, d, reps) for d in devs})


if __name__ == "__main__":
    main()
