#!/usr/bin/env python3
"""llama.cpp's own speed on a GGUF model, as the reference for hkv-model-bench.

Reads a JSON file {"model": PATH, "runs": [{"prompt": [ids], "decode": [ids]}], "threads": T},
runs each prompt as one prefill (batches of 512) and then feeds the decode tokens one at a
time (what the model computes per step does not depend on which token it is fed), with
llama-cpp-python, and prints JSON lines {"context", "prefill_tps", "decode_tps"}.
Needs llama-cpp-python (pip builds llama.cpp from source); the benchmark skips llama.cpp when
it is not installed and says so.
"""
import json
import sys
import time

from llama_cpp import Llama


def main(spec_path):
    spec = json.load(open(spec_path))
    longest = max(len(r["prompt"]) + len(r["decode"]) for r in spec["runs"])
    llm = Llama(
        model_path=spec["model"], n_ctx=longest + 16, n_batch=512, n_ubatch=512,
        n_threads=spec["threads"], n_threads_batch=spec["threads"], logits_all=False,
        verbose=False)
    for run in spec["runs"]:
        llm.reset()
        llm._ctx.kv_cache_clear()
        prompt = run["prompt"]
        start = time.perf_counter()
        llm.eval(prompt)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for token in run["decode"]:
            llm.eval([token])
        decode = time.perf_counter() - start
        print(json.dumps({
            "context": len(prompt), "prefill_tps": len(prompt) / prefill,
            "decode_tps": len(run["decode"]) / decode}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
