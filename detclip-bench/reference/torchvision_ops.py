"""The torchvision side of `detclip-bench ops`: times NMS and RoIAlign on the inputs that the
Rust side wrote, and reports a digest of each result so both sides can be compared.

    python torchvision_ops.py INPUTS.safetensors OUT.json REPS cpu|cuda
"""

import sys

import torch
from safetensors.torch import load_file

from common import bench, devices, syncer, write
from torchvision.ops import batched_nms, nms, roi_align


def run(t, device, reps):
    sync = syncer(device)
    t = {k: v.to(device) for k, v in t.items()}
    res = {}
    for n in (1000, 5000, 20000):
        b, s, c = t[f"nms{n}_boxes"], t[f"nms{n}_scores"], t[f"nms{n}_classes"]
        res[f"nms_{n}"] = bench(lambda _: f"{nms(b, s, 0.5).cpu().numel()} kept", reps, sync)
        res[f"batched_nms_{n}"] = bench(lambda _: f"{batched_nms(b, s, c, 0.5).cpu().numel()} kept", reps, sync)
    feats, rois = t["roi_features"], t["roi_rois"]
    for name, ratio in (("s2", 2), ("adaptive", -1)):
        def fwd(digest):
            with torch.no_grad():
                y = roi_align(feats, rois, (7, 7), spatial_scale=0.125, sampling_ratio=ratio, aligned=True)
            return f"sum {y.double().sum().item():.6f}" if digest else ""

        def fwd_bwd(digest):
            x = feats.detach().requires_grad_(True)
            y = roi_align(x, rois, (7, 7), spatial_scale=0.125, sampling_ratio=ratio, aligned=True)
            y.sum().backward()
            return f"|grad| {x.grad.double().abs().sum().item():.6f}" if digest else ""

        res[f"roi_align_{name}_fwd"] = bench(fwd, reps, sync)
        res[f"roi_align_{name}_fwd_bwd"] = bench(fwd_bwd, reps, sync)
    return res


def main():
    inputs, out, reps, want = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    t = load_file(inputs)
    devs = devices(want)
    write(out, devs, {d: run(t, d, reps) for d in devs})


if __name__ == "__main__":
    main()
