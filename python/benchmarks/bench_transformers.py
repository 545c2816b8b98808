"""SmolLM2 in transformers on HeteroKV against transformers' DynamicCache, in one process.

For each context length: the prompt (real text) is prefilled on each cache (in chunks, the
model's own sdpa attention), then the same tokens are teacher-forced one at a time on both.
Reported per cache: decode tokens/s, the process's resident memory with the cache alive, and
for HeteroKV the mean KL and top-1 agreement against DynamicCache, the kept share, the worker
share, bytes moved a step and the per-layer round trip as Python sees it.

    python python/benchmarks/bench_transformers.py --contexts 8000 --steps 128
    python python/benchmarks/bench_transformers.py --contexts 32000 --steps 32 --json

Past SmolLM2's 8K training length the tokens mean little; the work is real.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

import heterokv.transformers  # noqa: F401
from heterokv.transformers import HeteroKVCache

TEXTS = [
    "/usr/share/common-licenses/GPL-3",
    "/usr/share/common-licenses/Apache-2.0",
    "/usr/share/common-licenses/GPL-2",
    "/usr/share/common-licenses/LGPL-3",
    "/usr/share/common-licenses/MPL-2.0",
    "/usr/share/common-licenses/LGPL-2.1",
    "/usr/share/common-licenses/GFDL-1.3",
    "/usr/share/common-licenses/Artistic",
]


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run(model, cache, prompt: list[int], follow: list[int], chunk: int):
    """Prefill ``prompt`` in chunks, then teacher-force ``follow``; returns the log-probs of
    each decode step, the decode seconds, and the resident bytes after the last step."""
    logprobs = []
    with torch.no_grad():
        for start in range(0, len(prompt), chunk):
            logits = model(
                torch.tensor([prompt[start:start + chunk]]), cache=cache, use_cache=True
            ).logits
        started = time.perf_counter()
        for t in follow:
            logits = model(torch.tensor([[t]]), cache=cache, use_cache=True).logits
            logprobs.append(torch.log_softmax(logits[0, -1].float(), -1))
        seconds = time.perf_counter() - started
    return torch.stack(logprobs), seconds, resident_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="8000")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--policy", default="hcattention")
    parser.add_argument("--budget", type=float, default=0.125)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--in-process", action="store_true",
        help="the embedded cluster in one process, memory nodes reached without sockets",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gguf = Path(
        os.environ.get("HKV_SMOLLM2_GGUF")
        or Path.home() / ".cache" / "heterokv" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, attn_implementation="heterokv", dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids: list[int] = []
    for path in TEXTS:
        if os.path.exists(path):
            ids += tokenizer(open(path, errors="replace").read())["input_ids"]
    rows = []
    for context in (int(c) for c in args.contexts.split(",")):
        while len(ids) < context + args.steps:
            ids += ids  # past the texts: they repeat (the work is the same)
        prompt, follow = ids[:context], ids[context:context + args.steps]
        # HeteroKV first: what the full cache's K/V leave in the allocator once freed would
        # otherwise count against HeteroKV.
        gc.collect()
        base = resident_bytes()
        cache = HeteroKVCache(
            model.config, policy=args.policy, budget=args.budget,
            max_tokens=context + args.steps + 16, in_process=args.in_process,
        )
        got, hkv_seconds, hkv_rss = run(model, cache, prompt, follow, args.chunk)
        stats = cache.stats()[0]
        layer_step = cache.layer_step_seconds / max(1, cache.layer_steps)
        cache.close()
        del cache
        gc.collect()
        reference, full_seconds, full_rss = run(
            model, DynamicCache(config=model.config), prompt, follow, args.chunk
        )
        kl = (reference.exp() * (reference - got)).sum(-1)
        top1 = (reference.argmax(-1) == got.argmax(-1)).float().mean().item()
        row = {
            "context": context,
            "steps": args.steps,
            "policy": args.policy,
            "in_process": args.in_process,
            "budget": args.budget,
            "mean_kl": kl.mean().item(),
            "top1": top1,
            "full_tokens_per_second": args.steps / full_seconds,
            "heterokv_tokens_per_second": args.steps / hkv_seconds,
            "speed_ratio": full_seconds / hkv_seconds,
            "full_resident_mib": (full_rss - base) / 2**20,
            "heterokv_resident_mib": (hkv_rss - base) / 2**20,
            "kept_share": stats.kept_share,
            "worker_share": stats.worker_share,
            "bytes_moved_per_step": stats.decode_bytes_moved / max(1, stats.decode_steps),
            "layer_step_ms": layer_step * 1e3,
        }
        rows.append(row)
        if not args.json:
            print(
                f"{context} tokens, {args.steps} steps, {args.policy} at {args.budget}: "
                f"KL {row['mean_kl']:.4f}, top-1 {top1:.3f}; decode "
                f"{row['heterokv_tokens_per_second']:.2f} tok/s vs DynamicCache "
                f"{row['full_tokens_per_second']:.2f} ({row['speed_ratio']:.2f}x); resident "
                f"+{row['heterokv_resident_mib']:.0f} MiB vs +{row['full_resident_mib']:.0f} MiB; "
                f"kept {stats.kept_share:.1%}, worker {stats.worker_share:.1%}, "
                f"{row['bytes_moved_per_step'] / 1024:.0f} KiB moved a step, "
                f"{row['layer_step_ms']:.2f} ms a layer step from Python",
                flush=True,
            )
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
