"""The PyTorch side of `detclip-bench text`: LVIS's names encoded by all-MiniLM-L6-v2
(sentence-transformers), BERT-base and CLIP's ViT-B text tower (transformers, random weights),
eval() and no_grad(), on the names and CLIP ids the Rust side wrote.

    pip install torch transformers sentence-transformers safetensors
    python pytorch_text.py INPUTS.safetensors OUT.json REPS cpu|cuda NAMES.json MINILM_DIR BATCH THREADS
"""

import json
import sys
from importlib.metadata import version

import torch
from safetensors.torch import load_file

import common
from common import bench, devices, syncer


def main():
    inputs, out, reps, want = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    names_path, minilm, batch, threads = sys.argv[5], sys.argv[6], int(sys.argv[7]), int(sys.argv[8])
    torch.set_num_threads(threads)
    from sentence_transformers import SentenceTransformer
    from transformers import (AutoTokenizer, BertConfig, BertModel, CLIPTextConfig,
                              CLIPTextModelWithProjection)

    names = json.load(open(names_path))
    clip_ids = load_file(inputs)["clip_ids"]
    devs = devices(want)
    results = {}
    embeddings = None
    for dev in devs:
        sync = syncer(dev)
        res = {}
        st = SentenceTransformer(minilm, device=dev)

        def minilm_fn(first):
            nonlocal embeddings
            e = st.encode(names, batch_size=batch, convert_to_tensor=True)
            if first and dev == "cpu":
                embeddings = e.cpu().flatten().tolist()
            return ""

        with torch.no_grad():
            res["minilm"] = bench(minilm_fn, reps, sync)
        res["minilm"]["params"] = sum(p.numel() for p in st[0].auto_model.parameters())

        tok = AutoTokenizer.from_pretrained(minilm)
        bert = BertModel(BertConfig(), add_pooling_layer=False).eval().to(dev)

        def bert_fn(_):
            for i in range(0, len(names), batch):
                enc = tok(names[i:i + batch], padding=True, return_tensors="pt").to(dev)
                bert(**enc).last_hidden_state
            return ""

        with torch.no_grad():
            res["bert"] = bench(bert_fn, reps, sync)
        res["bert"]["params"] = sum(p.numel() for p in bert.parameters())

        clip = CLIPTextModelWithProjection(CLIPTextConfig(eos_token_id=49407)).eval().to(dev)
        ids = clip_ids.to(dev)

        def clip_fn(_):
            for i in range(0, ids.shape[0], batch):
                clip(input_ids=ids[i:i + batch]).text_embeds
            return ""

        with torch.no_grad():
            res["clip"] = bench(clip_fn, reps, sync)
        res["clip"]["params"] = sum(p.numel() for p in clip.parameters())
        results[dev] = res
    common.write(out, devs, results, minilm_embeddings=embeddings,
                 models={"transformers": version("transformers"),
                         "sentence-transformers": version("sentence-transformers")})


if __name__ == "__main__":
    main()
