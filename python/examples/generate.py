"""SmolLM2-135M in Hugging Face transformers with its KV cache on HeteroKV.

    bash scripts/fetch-model.sh                 # the GGUF, once
    pip install "./python[transformers]"
    python python/examples/generate.py [--prompt TEXT] [--cluster deploy/smollm2.yaml]

Without --cluster an embedded cluster (hkv child processes on loopback) is started and
stopped with the script; `hkv` is found on PATH, at $HKV_BIN or in this checkout's release
build.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import heterokv.transformers  # noqa: F401  (registers attn_implementation="heterokv")
from heterokv.transformers import HeteroKVCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--cluster", help="a running cluster's file (default: embedded)")
    parser.add_argument("--policy", default="hcattention", choices=["hcattention", "heterocache"])
    parser.add_argument("--budget", type=float, default=0.125)
    args = parser.parse_args()

    gguf = Path(
        os.environ.get("HKV_SMOLLM2_GGUF")
        or Path.home() / ".cache" / "heterokv" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, attn_implementation="heterokv", dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    cache = HeteroKVCache(model.config, cluster=args.cluster, policy=args.policy, budget=args.budget)
    started = time.perf_counter()
    out = model.generate(ids, cache=cache, max_new_tokens=args.max_new_tokens, do_sample=False)
    seconds = time.perf_counter() - started
    print(args.prompt + tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    stats = cache.stats()[0]
    print(
        f"{out.shape[1] - ids.shape[1]} tokens in {seconds:.1f} s; HeteroKV ({stats.policy}): "
        f"kept {stats.kept_share:.1%} of the context a step, worker {stats.worker_share:.1%} "
        f"of fp16 K/V, {stats.decode_bytes_moved / max(1, stats.decode_steps):.0f} bytes moved a step"
    )
    cache.close()


if __name__ == "__main__":
    main()
