"""Fixtures: the hkv binary, a small embedded cluster, and SmolLM2 in transformers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from heterokv import LocalCluster, find_hkv

#: A small geometry (2 layers, 4 query / 2 KV heads, dim 32): calls are quick to check.
SMALL_MODEL = {
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "model_type": "tiny",
}


@pytest.fixture(scope="session")
def hkv() -> str:
    return find_hkv()


@pytest.fixture(scope="module")
def small_cluster(hkv: str):
    with LocalCluster(SMALL_MODEL, memnodes=1, capacity="256MiB", max_context=4096, hkv=hkv) as c:
        yield c


def model_path() -> Path:
    """The SmolLM2 GGUF: $HKV_SMOLLM2_GGUF, else where scripts/fetch-model.sh puts it."""
    explicit = os.environ.get("HKV_SMOLLM2_GGUF")
    path = Path(explicit) if explicit else (
        Path(os.environ.get("HKV_MODEL_DIR", Path.home() / ".cache" / "heterokv"))
        / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run scripts/fetch-model.sh (or set HKV_SMOLLM2_GGUF)")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M in transformers with the heterokv attention, and its tokenizer."""
    import torch
    import heterokv.transformers  # noqa: F401  (registers the attention)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    path = model_path()
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, attn_implementation="heterokv", dtype=torch.float32
    )
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer
