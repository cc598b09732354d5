"""The PyTorch side of `detclip-bench regionspot`: RegionSpot at the official ViT-B/16 sizes
(`CLIP_400M`: SAM ViT-B, CLIP ViT-B/16, the module with 3 layers × 8 heads, FFN 2048), random
weights, batch 1 image with BOXES box prompts and 80 classes, eager, `eval()`:

- module: the trainable module + logits from given SAM tokens and CLIP features (what training
  and inference from cached features run);
- on_the_fly: SAM ViT-B (segment_anything, image encoder at 1024², prompt encoder, mask decoder
  with `multimask_output=False`) + CLIP ViT-B/16's feature map (transformers, 224²) + the module;
- train_step: the module's forward, focal loss, backward and an AdamW step on 2 images.

The module is the re-implementation of the official code in scripts/fixtures/regionspot.py.

    pip install segment-anything transformers
    python pytorch_regionspot.py UNUSED OUT.json REPS cpu|cuda BOXES THREADS
"""

import os
import sys

import torch

import common
from common import bench, devices, syncer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts", "fixtures"))
import regionspot as rs  # noqa: E402

CLASSES = 80


def module():
    rs.SAM_DIM, rs.CLIP_DIM, rs.TEXT_DIM, rs.HEADS, rs.LAYERS, rs.FFN = 256, 768, 512, 8, 3, 2048
    return rs.RegionSpotModule()


def run(device, reps, boxes):
    sync = syncer(device)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(1, boxes, 256, generator=g).to(device)
    clip_feat = torch.randn(1, 197, 768, generator=g).to(device)
    text = torch.nn.functional.normalize(torch.randn(CLASSES, 512, generator=g), dim=-1).to(device)
    xy = torch.rand(boxes, 2, generator=g) * 800
    wh = torch.rand(boxes, 2, generator=g) * 200 + 16
    box = torch.cat([xy, xy + wh], 1).to(device)
    image = torch.randn(1, 3, 1024, 1024, generator=g).to(device)
    pixels = torch.randn(1, 3, 224, 224, generator=g).to(device)
    head = module().to(device).eval()
    scale = torch.tensor(100.0, device=device)
    res = {}

    def cached(report):
        with torch.no_grad():
            logits = rs.get_logits(head(tokens, clip_feat), text, scale)
        return f"logits {list(logits.shape)}"

    res["module"] = bench(cached, reps, sync)

    from segment_anything import sam_model_registry
    from transformers import CLIPVisionConfig, CLIPVisionModel

    sam = sam_model_registry["vit_b"](checkpoint=None).to(device).eval()
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, image_size=224, patch_size=16)).to(device).eval()

    def on_the_fly(report):
        with torch.no_grad():
            sam_tokens, _ = rs.position_aware_tokens(sam, image, box)
            feat = clip(pixel_values=pixels).last_hidden_state
            logits = rs.get_logits(head(sam_tokens.transpose(0, 1), feat), text, scale)
        return f"logits {list(logits.shape)}"

    res["on_the_fly"] = bench(on_the_fly, max(1, reps // 2), sync)
    del sam, clip

    train = module().to(device).train()
    optim = torch.optim.AdamW(train.parameters(), lr=1e-4)
    tokens2, feat2 = tokens.repeat(2, 1, 1), clip_feat.repeat(2, 1, 1)
    labels = torch.randint(0, CLASSES, (2, boxes), generator=g).to(device)

    def step(report):
        optim.zero_grad()
        loss = rs.official_focal(rs.get_logits(train(tokens2, feat2), text, scale), labels)
        loss.backward()
        optim.step()
        return "loss [1]"

    res["train_step"] = bench(step, reps, sync)
    return res


def main():
    # argv[1] (an inputs file) is unused: both sides draw their own random inputs.
    out, reps, want, boxes, threads = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
    torch.set_num_threads(threads)
    devs = devices(want)
    results = {d: run(d, reps, boxes) for d in devs}
    common.write(out, devs, results)


if __name__ == "__main__":
    main()
