#!/usr/bin/env python3
"""Writes Tests/HeteroKVModelTests/Fixtures/smollm2-reference.json: values the Swift model is
checked against, computed by implementations that share no code with HeteroKV.

- Token ids of a few strings from llama.cpp's own tokenizer (llama-cpp-python).
- For a fixed list of token ids: the hidden state after layer 0 and the last token's top
  logits of the whole model, from a numpy forward pass over weights dequantized by the
  `gguf` package (llama.cpp's Python reader).

Usage: python3 scripts/reference-model.py MODEL.gguf OUT.json
Needs: pip install numpy gguf llama-cpp-python (not needed by CI: the fixture is committed).
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

STRINGS = [
    "The capital of France is",
    "Hello, world! It's 2026: 3.14159 and   spaces\n\ttabs.",
    "<|im_start|>user\nWhat is the pass key?<|im_end|>\n",
    "naïve café — 東京 😀",
]
# A fixed input for the forward pass ("<|im_start|>user The capital of France is" and more).
TOKENS = [1, 4093, 378, 3575, 282, 4649, 314, 30, 216, 34, 35, 36]


def main(model_path, out_path):
    reader = GGUFReader(model_path)

    def field(key):
        f = reader.fields[key]
        return f.parts[f.data[0]][0]

    layers = int(field("llama.block_count"))
    hidden = int(field("llama.embedding_length"))
    heads = int(field("llama.attention.head_count"))
    kv_heads = int(field("llama.attention.head_count_kv"))
    base = float(field("llama.rope.freq_base"))
    eps = float(field("llama.attention.layer_norm_rms_epsilon"))
    d = hidden // heads
    weights = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float64)
        weights[t.name] = w.reshape([int(x) for x in reversed(t.shape)])

    def rms_norm(x, w):
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w

    def rope(x, n_heads):
        # x: [tokens][heads*d]; rotate adjacent pairs (2i, 2i+1) by position * base^(-2i/d).
        t = x.shape[0]
        x = x.reshape(t, n_heads, d // 2, 2)
        pos = np.arange(t)[:, None]
        theta = pos * base ** (-np.arange(0, d, 2) / d)[None, :]
        c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        a, b = x[..., 0], x[..., 1]
        return np.stack([a * c - b * s, a * s + b * c], axis=-1).reshape(t, n_heads * d)

    def block(x, l):
        p = f"blk.{l}."
        n = rms_norm(x, weights[p + "attn_norm.weight"])
        q = rope(n @ weights[p + "attn_q.weight"].T, heads)
        k = rope(n @ weights[p + "attn_k.weight"].T, kv_heads)
        v = n @ weights[p + "attn_v.weight"].T
        t = x.shape[0]
        out = np.zeros((t, heads, d))
        mask = np.triu(np.full((t, t), -np.inf), 1)
        for h in range(heads):
            g = h // (heads // kv_heads)
            qh, kh, vh = q[:, h * d:(h + 1) * d], k[:, g * d:(g + 1) * d], v[:, g * d:(g + 1) * d]
            s = qh @ kh.T / np.sqrt(d) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            out[:, h, :] = (s / s.sum(axis=1, keepdims=True)) @ vh
        x = x + out.reshape(t, hidden) @ weights[p + "attn_output.weight"].T
        n2 = rms_norm(x, weights[p + "ffn_norm.weight"])
        gate = n2 @ weights[p + "ffn_gate.weight"].T
        up = n2 @ weights[p + "ffn_up.weight"].T
        act = gate / (1 + np.exp(-gate)) * up
        return x + act @ weights[p + "ffn_down.weight"].T

    x = weights["token_embd.weight"][TOKENS]
    x = block(x, 0)
    after_layer0 = x.copy()
    for l in range(1, layers):
        x = block(x, l)
    out_w = weights.get("output.weight", weights["token_embd.weight"])
    logits = rms_norm(x[-1], weights["output_norm.weight"]) @ out_w.T
    top = np.argsort(-logits)[:10]

    from llama_cpp import Llama

    llm = Llama(model_path=model_path, vocab_only=True, verbose=False)
    token_ids = {s: llm.tokenize(s.encode("utf-8"), add_bos=False, special=True) for s in STRINGS}

    fixture = {
        "source": "scripts/reference-model.py (numpy over gguf-dequantized weights; llama.cpp tokenizer)",
        "tokens": TOKENS,
        "afterLayer0": [round(float(v), 6) for v in after_layer0.reshape(-1)],
        "topLogitIDs": [int(i) for i in top],
        "topLogits": [round(float(logits[i]), 5) for i in top],
        "tokenIDs": [{"text": s, "ids": ids} for s, ids in token_ids.items()],
    }
    with open(out_path, "w") as f:
        json.dump(fixture, f, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
