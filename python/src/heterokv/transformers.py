"""HeteroKV as the KV cache of a Hugging Face transformers model.

Importing this module registers the attention implementation ``"heterokv"``; load a model with
``attn_implementation="heterokv"`` and pass a :class:`HeteroKVCache` as its cache::

    import heterokv.transformers
    from heterokv.transformers import HeteroKVCache
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=name, attn_implementation="heterokv")
    cache = HeteroKVCache(model.config)                          # embedded cluster, recommended settings
    cache = HeteroKVCache(model.config, cluster="cluster.yaml")  # a running cluster's worker
    out = model.generate(ids, past_key_values=cache, max_new_tokens=64)

Prefill attention is the model's own (sdpa): the prompt's K/V (and its last queries, for
HeteroCache's head profiles) go to HeteroKV layer by layer, and the cache keeps none of them
once decoding starts. Every decode step's attention on a full-attention layer comes from
HeteroKV. Layers the config marks ``sliding_attention`` keep their K/V in transformers' own
sliding layer. Each batch row is one HeteroKV sequence; left padding is never appended.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
import weakref
from typing import Any, Callable

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicSlidingWindowLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from heterokv.client import EngineClient, SequenceStats
from heterokv.cluster import LocalCluster
from heterokv.errors import HeteroKVError

__all__ = ["ATTENTION_NAME", "HeteroKVCache", "HeteroKVLayer", "heterokv_attention"]

#: The name to load a model with (``attn_implementation=ATTENTION_NAME``).
ATTENTION_NAME = "heterokv"

#: Query rows of each prompt chunk sent for HeteroCache's head profiles (as the Swift model).
OBSERVATION_ROWS = 32

# The attribute a layer sets on the key tensor it returns, so the attention function (which
# sees the tensor but not the cache) finds the layer and what the step is.
_MARK = "_heterokv_step"


class _Step:
    __slots__ = ("layer", "phase", "tokens")

    def __init__(self, layer: "HeteroKVLayer", phase: str, tokens: int) -> None:
        self.layer = layer
        self.phase = phase  # "prefill" or "decode"
        self.tokens = tokens


def _release_all(client: EngineClient, sequences: list[int], namespace: int,
                 cluster: LocalCluster | None) -> None:
    for sequence in sequences:
        try:
            client.release(sequence, namespace=namespace)
        except HeteroKVError:
            pass
    sequences.clear()
    client.close()
    if cluster is not None:
        cluster.stop()


def _worker_address(cluster_file: str) -> tuple[str, str | None]:
    """The worker's engine address and the shared token of a cluster file."""
    import yaml

    with open(cluster_file) as f:
        document = yaml.safe_load(f) or {}
    worker = document.get("worker") or {}
    address = worker.get("control")
    if not address:
        raise HeteroKVError("invalid_argument", f"{cluster_file} has no worker.control address")
    security = document.get("security") or {}
    token = None
    if security.get("token_env"):
        token = os.environ.get(security["token_env"])
    elif security.get("token_file"):
        with open(security["token_file"]) as f:
            token = f.readline().strip()
    return str(address), token


def _worker_scaled(query: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """``query`` in fp32, scaled so that the worker's 1/sqrt(head_dim) gives the model's own
    ``scaling``."""
    q = query.float()
    d = query.shape[-1]
    if scaling is not None and not math.isclose(scaling, d**-0.5, rel_tol=1e-6):
        q = q * (scaling * math.sqrt(d))
    return q


class HeteroKVLayer(CacheLayerMixin):
    """One full-attention layer of a :class:`HeteroKVCache`: its K/V live in HeteroKV.

    During the prefill the layer holds the prompt's K/V (the model's own attention needs them);
    from the first decode step it holds nothing but a token count.
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, cache: "HeteroKVCache", index: int, model_layer: int) -> None:
        super().__init__()
        self.cache = cache
        #: The layer's index among HeteroKV's layers (full-attention layers only).
        self.index = index
        #: The layer's index in the model.
        self.model_layer = model_layer
        self.length = 0
        self.decoding = False
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        self.cache._open(key_states.shape[0])
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        tokens = key_states.shape[-2]
        self.cache._check_shape(self, key_states, value_states)
        if not self.decoding and (tokens > 1 or self.keys is None):
            # A prompt chunk: the model's attention needs every prompt token so far.
            if self.keys is None:
                self.keys, self.values = key_states, value_states
            else:
                self.keys = torch.cat([self.keys, key_states], dim=-2)
                self.values = torch.cat([self.values, value_states], dim=-2)
            self.length += tokens
            keys = self.keys.view_as(self.keys)
            setattr(keys, _MARK, _Step(self, "prefill", tokens))
            return keys, self.values
        if tokens != 1:
            raise HeteroKVError(
                "failed_precondition",
                f"layer {self.model_layer}: {tokens} tokens in one forward after decoding started; "
                "HeteroKVCache decodes one token per row at a time",
            )
        return self._start_decoding(key_states, value_states)

    def _start_decoding(
        self, key_states: torch.Tensor, value_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The prompt's K/V are HeteroKV's now.
        self.decoding = True
        self.keys = self.values = None
        self.length += 1
        self._pending = (key_states, value_states)
        keys = key_states.view_as(key_states)
        setattr(keys, _MARK, _Step(self, "decode", 1))
        return keys, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = None
        self.length = 0
        self.decoding = False
        self._pending = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise HeteroKVError(
            "failed_precondition", "HeteroKVCache does not reorder sequences (beam search)"
        )

    def crop(self, tokens_to_remove: int) -> None:
        raise HeteroKVError(
            "failed_precondition", "HeteroKVCache cannot drop tokens it has appended (crop)"
        )

    # -- what the attention function calls --------------------------------------------------

    def append_prompt(
        self, query: torch.Tensor, tokens: int, attention_mask: torch.Tensor | None,
        scaling: float | None,
    ) -> None:
        """Sends the last prompt chunk's K/V (``tokens`` positions) and its last queries, row by
        row, leaving out the positions the mask hides from every query (padding)."""
        assert self.keys is not None and self.values is not None
        keys = self.keys[:, :, -tokens:, :]
        values = self.values[:, :, -tokens:, :]
        queries = _worker_scaled(query[:, :, -tokens:, :], scaling)
        for b, sequence in enumerate(self.cache._sequences):
            valid = self.cache._valid_positions(attention_mask, b, tokens)
            k = keys[b].transpose(0, 1)  # [tokens][kv_heads][head_dim]
            v = values[b].transpose(0, 1)
            q = queries[b].transpose(0, 1)  # [tokens][query_heads][head_dim]
            if valid is not None:
                k, v, q = k[valid], v[valid], q[valid]
            if k.shape[0] == 0:
                continue
            self.cache.client.append(
                sequence, self.index, k, v, observation_queries=q[-OBSERVATION_ROWS:],
                namespace=self.cache.namespace,
            )

    def decode(self, query: torch.Tensor, scaling: float | None) -> torch.Tensor:
        """Appends the pending token and attends ``query`` ``[batch][query_heads][1][dim]``;
        returns ``[batch][1][query_heads][dim]`` in the query's dtype."""
        assert self._pending is not None
        key_states, value_states = self._pending
        self._pending = None
        q = _worker_scaled(query[:, :, 0, :], scaling)
        outputs = []
        client = self.cache.client
        started = time.perf_counter()
        for b, sequence in enumerate(self.cache._sequences):
            # One round trip: the token's K/V appended, then the query attended.
            result = client.append_attend(
                sequence, self.index,
                key_states[b].transpose(0, 1), value_states[b].transpose(0, 1), q[b],
                namespace=self.cache.namespace,
            )
            outputs.append(result.output)
            self.cache.bytes_moved += result.bytes_moved
        self.cache.layer_steps += len(outputs)
        self.cache.layer_step_seconds += time.perf_counter() - started
        out = torch.stack(outputs).to(device=query.device, dtype=query.dtype)
        return out.unsqueeze(1)  # [batch][1][query_heads][dim]


class HeteroKVCache(Cache):
    """A transformers ``Cache`` whose full-attention layers live in HeteroKV.

    ``cluster`` is a cluster file (its worker's address and token are used), a worker address
    ``host:port``, or ``None`` for an embedded cluster of ``hkv`` child processes built from
    ``config`` with the recommended settings (``policy``, ``budget``, ``memnodes``,
    ``replication`` and ``max_tokens`` size it; ``in_process`` puts every role of it in one
    child process, the worker reaching the memory nodes without sockets). ``max_tokens`` is
    the longest context a sequence may reach (default: the config's
    ``max_position_embeddings``, at most 8192: the memory tier reserves it for every sequence). ``timeout`` bounds every call to the worker in seconds.
    """

    def __init__(
        self,
        config: Any,
        cluster: str | os.PathLike[str] | None = None,
        *,
        token: str | None = None,
        policy: str = "hcattention",
        budget: float = 0.125,
        memnodes: int = 2,
        replication: int = 1,
        max_tokens: int | None = None,
        in_process: bool = False,
        timeout: float = 60.0,
        namespace: int = 0,
    ) -> None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        implementation = getattr(config, "_attn_implementation", None)
        if implementation != ATTENTION_NAME:
            # Another attention would attend only the token a decode step hands it.
            raise HeteroKVError(
                "failed_precondition",
                f"the model runs attn_implementation={implementation!r}: load it with "
                f'attn_implementation="{ATTENTION_NAME}" (after import heterokv.transformers)',
            )
        self.config = text
        layers_count = int(text.num_hidden_layers)
        layer_types = list(getattr(text, "layer_types", None) or ["full_attention"] * layers_count)
        if len(layer_types) != layers_count:
            raise HeteroKVError(
                "invalid_argument",
                f"config.layer_types lists {len(layer_types)} layers, num_hidden_layers is {layers_count}",
            )
        self.query_heads = int(text.num_attention_heads)
        self.kv_heads = int(getattr(text, "num_key_value_heads", None) or self.query_heads)
        self.head_dim = int(
            getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        )
        layers: list[CacheLayerMixin] = []
        full = 0
        for i, kind in enumerate(layer_types):
            if kind == "full_attention":
                layers.append(HeteroKVLayer(self, full, i))
                full += 1
            elif kind == "sliding_attention":
                layers.append(DynamicSlidingWindowLayer(sliding_window=text.sliding_window))
            else:
                raise HeteroKVError(
                    "invalid_argument",
                    f"layer {i} is {kind!r}: HeteroKVCache holds full_attention and "
                    "sliding_attention layers only",
                )
        if full == 0:
            raise HeteroKVError("invalid_argument", "the config has no full_attention layer")
        super().__init__(layers=layers)
        self.namespace = namespace
        # The memory tier reserves room for max_tokens of every sequence: not a 128K context
        # unless asked for.
        self.max_tokens = int(
            max_tokens or min(getattr(text, "max_position_embeddings", None) or 8192, 8192)
        )
        self._cluster: LocalCluster | None = None
        if cluster is None:
            # Each node can hold its share of one sequence at max_tokens (fp16 K and V of every
            # full-attention layer), with room to spare.
            row_bytes = full * self.kv_heads * self.head_dim * 4
            share = self.max_tokens * row_bytes * replication // memnodes
            capacity = f"{max(4 << 30, share * 2) >> 20}MiB"
            self._cluster = LocalCluster(
                text.to_dict(), policy=policy, budget=budget, memnodes=memnodes,
                replication=replication, capacity=capacity, max_context=self.max_tokens,
                in_process=in_process,
            )
            address = self._cluster.engine
        elif os.path.exists(os.fspath(cluster)):
            address, file_token = _worker_address(os.fspath(cluster))
            token = token or file_token
        else:
            address = os.fspath(cluster)
        self.client = EngineClient(address, token=token, timeout=timeout)
        self._sequences: list[int] = []
        self._lock = threading.Lock()
        #: Decode layer steps (one row, one layer) answered by HeteroKV, the seconds they took
        #: as this process saw them (the call and its round trip), and the bytes they moved
        #: between the worker and the memory tier.
        self.layer_steps = 0
        self.layer_step_seconds = 0.0
        self.bytes_moved = 0
        self._finalizer = weakref.finalize(
            self, _release_all, self.client, self._sequences, namespace, self._cluster
        )

    # -- the engine's view ------------------------------------------------------------------

    @property
    def sequences(self) -> tuple[int, ...]:
        """The HeteroKV sequence of each batch row (empty before the first forward)."""
        return tuple(self._sequences)

    def stats(self) -> list[SequenceStats]:
        """The worker's figures per batch row: kept share, bytes moved, worker share, heads."""
        return [self.client.stats(s, namespace=self.namespace) for s in self._sequences]

    def release(self) -> None:
        """Frees every sequence on the worker and the memory tier; the cache can then start a
        new generation. (Garbage collection does the same, and stops an embedded cluster.)"""
        with self._lock:
            for sequence in list(self._sequences):
                self.client.release(sequence, namespace=self.namespace)
            self._sequences.clear()
        for layer in self.layers:
            layer.reset()
            layer.is_initialized = False

    def close(self) -> None:
        """Releases the sequences, closes the client and stops an embedded cluster."""
        self._finalizer()

    def reset(self) -> None:
        self.release()

    # -- internals ---------------------------------------------------------------------------

    def _open(self, batch: int) -> None:
        with self._lock:
            if self._sequences:
                if len(self._sequences) != batch:
                    raise HeteroKVError(
                        "invalid_argument",
                        f"a batch of {batch} rows on a cache holding {len(self._sequences)} sequences",
                    )
                return
            for _ in range(batch):
                sequence = secrets.randbits(62) + 1
                self.client.create_sequence(sequence, self.max_tokens, namespace=self.namespace)
                self._sequences.append(sequence)

    def _check_shape(self, layer: HeteroKVLayer, keys: torch.Tensor, values: torch.Tensor) -> None:
        expected = (len(self._sequences), self.kv_heads, keys.shape[-2], self.head_dim)
        for name, t in (("keys", keys), ("values", values)):
            if tuple(t.shape) != expected:
                raise HeteroKVError(
                    "invalid_argument",
                    f"layer {layer.model_layer}: {name} of shape {tuple(t.shape)}, expected "
                    f"[batch {expected[0]}][kv_heads {self.kv_heads}][tokens][head_dim {self.head_dim}]",
                )
            if not t.is_floating_point():
                raise HeteroKVError(
                    "invalid_argument", f"layer {layer.model_layer}: {name} of dtype {t.dtype}"
                )

    @staticmethod
    def _valid_positions(mask: torch.Tensor | None, row: int, tokens: int) -> torch.Tensor | None:
        """Which of the chunk's last ``tokens`` key positions some query of row ``row`` may see
        (``None``: all of them)."""
        if mask is None:
            return None
        m = mask[row if mask.shape[0] > 1 else 0, 0]  # [queries][kv]
        if m.dtype == torch.bool:
            seen = m.any(dim=0)
        else:
            seen = (m > torch.finfo(m.dtype).min / 2).any(dim=0)
        if seen.shape[0] < tokens:
            raise HeteroKVError(
                "invalid_argument",
                f"an attention mask over {seen.shape[0]} positions for a chunk of {tokens} tokens",
            )
        seen = seen[-tokens:]
        return None if bool(seen.all()) else seen


def heterokv_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The ``"heterokv"`` attention: sdpa for the prefill (and for layers without a HeteroKV
    cache), HeteroKV's attention for decode steps. Refuses, by name, what it cannot honour."""
    if softcap is not None:
        raise HeteroKVError(
            "invalid_argument", "heterokv attention has no attention-logit softcap (softcap set)"
        )
    if dropout and dropout > 0:
        raise HeteroKVError(
            "invalid_argument", f"heterokv attention does not apply dropout ({dropout}); use eval()"
        )
    if kwargs.get("output_attentions"):
        raise HeteroKVError(
            "invalid_argument", "heterokv attention returns no attention weights (output_attentions)"
        )
    step: _Step | None = getattr(key, _MARK, None)
    if step is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            sliding_window=sliding_window, **kwargs,
        )
    if step.phase == "prefill":
        out, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            sliding_window=sliding_window, **kwargs,
        )
        step.layer.append_prompt(query, step.tokens, attention_mask, scaling)
        return out, None
    if sliding_window is not None:
        raise HeteroKVError(
            "invalid_argument",
            f"layer {step.layer.model_layer}: a sliding window ({sliding_window}) on a "
            "full-attention HeteroKV layer",
        )
    return step.layer.decode(query, scaling), None


AttentionInterface.register(ATTENTION_NAME, heterokv_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
