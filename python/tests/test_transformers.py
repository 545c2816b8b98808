"""SmolLM2 in transformers with its KV cache on HeteroKV (an embedded cluster)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import DynamicCache  # noqa: E402

from heterokv import HeteroKVError  # noqa: E402
from heterokv.transformers import HeteroKVCache, heterokv_attention  # noqa: E402

pytestmark = pytest.mark.model


def text_tokens(tokenizer, count: int) -> list[int]:
    with open("/usr/share/common-licenses/GPL-3") as f:
        ids = tokenizer(f.read())["input_ids"]
    assert len(ids) >= count
    return ids[:count]


def teacher_forced(model, cache, prompt: list[int], follow: list[int]) -> torch.Tensor:
    """Log-probabilities after the prompt and after each forced token of ``follow``."""
    out = []
    with torch.no_grad():
        logits = model(torch.tensor([prompt]), cache=cache, use_cache=True).logits
        out.append(torch.log_softmax(logits[0, -1].float(), -1))
        for t in follow:
            logits = model(torch.tensor([[t]]), cache=cache, use_cache=True).logits
            out.append(torch.log_softmax(logits[0, -1].float(), -1))
    return torch.stack(out)


def test_generate_continues_with_paris(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    cache = HeteroKVCache(model.config)
    try:
        out = model.generate(ids, past_key_values=cache, max_new_tokens=3, do_sample=False)
        assert tokenizer.decode(out[0, ids.shape[1]:]).startswith(" Paris")
        stats = cache.stats()
        assert len(stats) == 1 and stats[0].decode_steps >= 1
        assert stats[0].tokens == ids.shape[1] + 2
    finally:
        cache.close()


def test_a_running_clusters_file_or_address(smollm2):
    from heterokv import LocalCluster

    model, tokenizer = smollm2
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with LocalCluster(model.config.to_dict()) as cluster:
        for where in (cluster.config_path, cluster.engine):
            cache = HeteroKVCache(model.config, cluster=where)
            out = model.generate(ids, cache=cache, max_new_tokens=2, do_sample=False)
            assert tokenizer.decode(out[0, ids.shape[1]:]).startswith(" Paris"), where
            cache.close()
        assert cluster.running  # a cache closes its sequences, not someone else's cluster


def test_decode_follows_the_full_cache_on_real_text(smollm2):
    model, tokenizer = smollm2
    ids = text_tokens(tokenizer, 700)
    prompt, follow = ids[:600], ids[600:632]
    reference = teacher_forced(model, DynamicCache(config=model.config), prompt, follow)
    cache = HeteroKVCache(model.config, budget=0.125)
    try:
        got = teacher_forced(model, cache, prompt, follow)
        stats = cache.stats()[0]
    finally:
        cache.close()
    # The prompt's own step is exact (prefill attention is the model's).
    assert torch.allclose(got[0], reference[0], atol=1e-4)
    kl = (reference.exp() * (reference - got)).sum(-1)[1:]
    top1 = (reference.argmax(-1) == got.argmax(-1)).float()[1:].mean().item()
    assert kl.mean().item() < 0.02, kl
    assert top1 >= 0.9
    # It is not the full cache: a step attends part of the context.
    assert 0 < stats.kept_share < 1
    assert stats.worker_bytes < stats.full_kv_bytes


def test_a_batch_with_left_padding_appends_no_pad_token(smollm2):
    model, tokenizer = smollm2
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = ["The capital of France is", "One, two, three, four, five, six,"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    cache = HeteroKVCache(model.config)
    try:
        out = model.generate(**batch, cache=cache, max_new_tokens=2, do_sample=False)
        stats = cache.stats()
    finally:
        cache.close()
    lengths = batch.attention_mask.sum(-1).tolist()
    assert [s.tokens for s in stats] == [n + 1 for n in lengths]
    for row, prompt in enumerate(prompts):
        alone = tokenizer(prompt, return_tensors="pt").input_ids
        single = model.generate(alone, max_new_tokens=2, do_sample=False)
        assert out[row, -2:].tolist() == single[0, -2:].tolist()


def test_what_it_cannot_honour_is_refused_by_name():
    q = torch.zeros(1, 2, 1, 8)
    with pytest.raises(HeteroKVError, match="softcap"):
        heterokv_attention(torch.nn.Module(), q, q, q, None, softcap=30.0)
    with pytest.raises(HeteroKVError, match="dropout"):
        heterokv_attention(torch.nn.Module(), q, q, q, None, dropout=0.1)


def test_a_model_on_another_attention_is_refused():
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4)
    config._attn_implementation = "sdpa"
    with pytest.raises(HeteroKVError, match='attn_implementation="heterokv"'):
        HeteroKVCache(config)
