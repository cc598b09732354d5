"""PyTorch timing of the same GLIP-T architecture that `detclip-bench glip` times, assembled from
the modules of scripts/fixtures/glip.py: GLIP's own `swint.py` (Swin-T, official detection
layout), torchvision's FPN with P6/P7 from P5, transformers' BERT-base, and six layers of the
fixture script's X-MHA (`BiAttentionBlock`), `BertLayer` and DyHead block (`DyConv`, with
torchvision's deform_conv2d), then the dot-product head (box, centerness, token alignment).
Random weights, batch 1, eager, `eval()` and `torch.no_grad()`; no post-processing (the Rust
side's figures include it; it is a small part of the time).

Times, in the protocol of `detclip-bench glip`: one 80-class forward (a 256-token prompt) and,
for the 1203 LVIS classes in 31 chunks, the image side once plus one chunk (language encoder,
fusion tower, head) timed and counted 31 times.

    git -C <GLIP checkout> show HEAD:maskrcnn_benchmark/modeling/backbone/swint.py > /tmp/glip_swint.py
    GLIP_SWINT=/tmp/glip_swint.py python detclip-bench/reference/pytorch_glip.py [THREADS] [H W] \
        [--device cpu|cuda] [--reps N] [--out FILE]

Writes detclip-bench/results/glip_pytorch.md.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts", "fixtures"))
import glip as fx  # noqa: E402

TOKENS, LVIS_CHUNKS = 256, 31


class GlipT(nn.Module):
    def __init__(self):
        super().__init__()
        from transformers.models.bert.modeling_bert import BertConfig, BertLayer, BertModel

        swint = fx.official_swint()
        self.body = swint.SwinTransformer(
            patch_size=4, in_chans=3, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
            window_size=7, mlp_ratio=4, qkv_bias=True, norm_layer=nn.LayerNorm, ape=False,
            patch_norm=True, frozen_stages=-1, backbone_arch="SWINT-FPN-RETINANET",
            out_features=["stage2", "stage3", "stage4", "stage5"])
        self.fpn = FeaturePyramidNetwork([192, 384, 768], 256, LastLevelP6P7(256, 256))
        cfg = BertConfig()
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.fusions = nn.ModuleList(fx.BiAttentionBlock(256, 768, 2048, 8, False) for _ in range(6))
        self.text_layers = nn.ModuleList(BertLayer(cfg) for _ in range(6))
        self.dyconvs = nn.ModuleList(fx.DyConv(256, 256, 16) for _ in range(6))
        self.bbox_pred = nn.Conv2d(256, 4, 1)
        self.centerness = nn.Conv2d(256, 1, 1)
        self.proj = nn.Linear(768, 256)
        self.bias_lang = nn.Parameter(torch.zeros(768))

    def image(self, x):
        feats = self.body(x)  # stage2..stage5 (C2..C5)
        return list(self.fpn({"c3": feats[1], "c4": feats[2], "c5": feats[3]}).values())

    def rest(self, levels, ids, mask):
        words = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        ext = (1.0 - mask[:, None, None, :].float()) * -10000.0
        for fusion, text, dyconv in zip(self.fusions, self.text_layers, self.dyconvs):
            levels, words = fusion(levels, words, mask)
            o = text(words, attention_mask=ext)
            words = o[0] if isinstance(o, tuple) else o
            levels = dyconv(levels)
        unit = F.normalize(words, dim=-1)
        tokens = self.proj(unit / 2.0)
        bias = unit @ self.bias_lang
        out = []
        for x in levels:
            q = x.flatten(2).transpose(1, 2)
            out.append(((q @ tokens.transpose(1, 2)) + bias[:, None, :]).clamp(-50000, 50000))
            out.append(self.bbox_pred(x))
            out.append(self.centerness(x))
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("threads", nargs="?", type=int, default=2, help="CPU threads of torch")
    ap.add_argument("hw", nargs="*", type=int, help="image height and width (default 800 1333)")
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--reps", type=int, default=1,
                    help="timed runs of each measurement (the median is reported); more than 1 "
                         "adds one untimed warm-up run")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "results", "glip_pytorch.md"))
    a = ap.parse_args()
    h, w = (a.hw + [800, 1333])[:2] if len(a.hw) != 1 else ap.error("give both H and W")
    h, w = a.height or h, a.width or w
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = GlipT().eval()
    params = sum(p.numel() for p in model.parameters())
    model = model.to(dev)
    image = torch.randn(1, 3, h, w).to(dev)
    ids = torch.randint(1000, 30000, (1, TOKENS)).to(dev)
    mask = torch.ones(1, TOKENS, dtype=torch.long).to(dev)

    def timed(f):
        sync()
        t = time.perf_counter()
        out = f()
        sync()
        return (time.perf_counter() - t) * 1e3, out

    fulls, images, chunks = [], [], []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        for i in range(a.reps + (1 if a.reps > 1 else 0)):
            full, _ = timed(lambda: model.rest(model.image(image), ids, mask))
            image_ms, levels = timed(lambda: model.image(image))
            chunk_ms, _ = timed(lambda: model.rest(levels, ids, mask))
            if a.reps > 1 and i == 0:
                continue
            fulls.append(full)
            images.append(image_ms)
            chunks.append(chunk_ms)
    full, image_ms, chunk_ms = (statistics.median(v) for v in (fulls, images, chunks))
    total = image_ms + LVIS_CHUNKS * chunk_ms
    if dev.type == "cuda":
        where = (f"{torch.cuda.get_device_name()}, peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB "
                 "allocated by torch")
    else:
        where = f"{a.threads} CPU threads"
    runs = "one run each (no warm-up)" if a.reps == 1 else f"median of {a.reps} runs after one warm-up"
    cmd = " ".join(["python", "detclip-bench/reference/pytorch_glip.py"] + sys.argv[1:])
    md = (
        "# GLIP-T in PyTorch (the same architecture, for comparison with glip.md)\n\n"
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}, device {dev.type}: {where}\n"
        f"- command: `GLIP_SWINT=/tmp/glip_swint.py {cmd}`\n"
        "- model: GLIP's `swint.py` Swin-T, torchvision FPN (P6/P7 from P5), transformers BERT-base, "
        "six layers of scripts/fixtures/glip.py's X-MHA, BertLayer and DyHead block (torchvision "
        f"deform_conv2d), dot-product head; random weights, {params / 1e6:.1f} M parameters; "
        f"eager, `eval()`, `torch.no_grad()`, batch 1, {h}×{w}, {runs}, no post-processing\n\n"
        "| measurement | ms |\n|---|---:|\n"
        f"| 80 classes, one 256-token prompt | {full:.0f} |\n"
        f"| LVIS: image side once (Swin-T + FPN) | {image_ms:.0f} |\n"
        f"| LVIS: one chunk (BERT, fusion tower, head) | {chunk_ms:.0f} |\n"
        f"| LVIS: total, image side + {LVIS_CHUNKS} × chunk | {total:.0f} |\n"
    )
    with open(a.out, "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
