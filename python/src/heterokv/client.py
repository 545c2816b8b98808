"""A client of the worker's engine API (``Proto/heterokv/v1/engine.proto``) over gRPC.

Tensors go in as numpy arrays or torch tensors of any float dtype and travel as the API says:
keys and values fp16 ``[tokens][kv_heads][head_dim]``, queries and outputs fp32
``[query_heads][head_dim]``. Every refusal is raised as :class:`heterokv.HeteroKVError`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import grpc
import numpy as np

from heterokv.errors import HeteroKVError
from heterokv.v1 import coordinator_pb2, engine_pb2, engine_pb2_grpc

__all__ = [
    "AttendResult",
    "EngineClient",
    "HeadStats",
    "SequenceInfo",
    "SequenceStats",
]

#: The worker's message limit (engine.proto): a call's tensors must fit in it.
MAX_MESSAGE_BYTES = 64 << 20
#: Keys (and as many values) per Append message of a long prefill, as the Swift client.
APPEND_PIECE_BYTES = 16 << 20


@dataclass(frozen=True)
class SequenceInfo:
    """What the worker answered when a sequence was created: its geometry and placement."""

    sequence: int
    namespace: int
    model: str
    layers: int
    query_heads: int
    kv_heads: int
    head_dim: int
    placement_version: int
    nodes: tuple[str, ...]
    replication: int


@dataclass(frozen=True)
class AttendResult:
    """One layer's attention output and what the step moved.

    ``output`` is ``[query_heads][head_dim]`` fp32 (a torch tensor when the query was one, on
    its device). ``selections``, when asked for, lists per query head the token positions
    whose values entered its output.
    """

    output: Any
    bytes_moved: int
    selections: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class HeadStats:
    """One KV head of one layer: its HeteroCache role, budget cap and resident bytes."""

    layer: int
    kv_head: int
    role: str
    cap: int
    resident_bytes: int
    pivot: int


@dataclass(frozen=True)
class SequenceStats:
    """Where a sequence's bytes are and what its steps moved (the worker's figures)."""

    tokens: int
    prefill_tokens: int
    policy: str
    worker_bytes: int
    memory_tier_bytes: int
    full_kv_bytes: int
    decode_steps: int
    bytes_moved: int
    decode_bytes_moved: int
    kept_tokens: int
    context_tokens: int
    refreshes: int
    failovers: int
    unshipped_rows: int
    stored_rows: int
    under_replicated_shards: int
    heads: tuple[HeadStats, ...] = field(default_factory=tuple)

    @property
    def kept_share(self) -> float:
        """Share of the context a decode step attended, over every query head and step."""
        return self.kept_tokens / self.context_tokens if self.context_tokens else 0.0

    @property
    def worker_share(self) -> float:
        """The worker's bytes as a share of fp16 K/V of every token of every layer."""
        return self.worker_bytes / self.full_kv_bytes if self.full_kv_bytes else 0.0


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _to_numpy(x: Any, dtype: type) -> np.ndarray:
    """``x`` (numpy array, torch tensor of any float dtype, or nested lists) as a C-contiguous
    numpy array of ``dtype``."""
    if _is_torch(x):
        import torch

        t = x.detach()
        target = torch.float16 if dtype is np.float16 else torch.float32
        return t.to(device="cpu", dtype=target).contiguous().numpy()
    return np.ascontiguousarray(np.asarray(x), dtype=dtype)


class EngineClient:
    """The engine API of the worker at ``address`` (``host:port``).

    ``token`` is the cluster's shared token, sent as ``authorization: Bearer <token>``;
    ``timeout`` bounds every call in seconds, so a worker that dies mid-call is an error
    naming it, never a hang. Thread-safe; close it (or use it as a context manager) to free
    the channel.
    """

    def __init__(self, address: str, token: str | None = None, timeout: float = 60.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.address = address
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = engine_pb2_grpc.EngineStub(self._channel)
        self._geometry: dict[tuple[int, int], SequenceInfo] = {}
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the channel; later calls fail."""
        self._channel.close()

    def __enter__(self) -> "EngineClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls -------------------------------------------------------------------------------

    def create_sequence(
        self,
        sequence: int,
        max_tokens: int,
        namespace: int = 0,
        profiles: Sequence[coordinator_pb2.HeadProfileReport] = (),
    ) -> SequenceInfo:
        """Opens sequence ``sequence`` for contexts of up to ``max_tokens`` tokens."""
        if max_tokens <= 0:
            raise HeteroKVError("invalid_argument", f"max_tokens must be positive, got {max_tokens}")
        request = engine_pb2.CreateSequenceRequest(
            ref=self._ref(sequence, namespace), max_tokens=max_tokens, profiles=list(profiles)
        )
        answer = self._call("CreateSequence", self._stub.CreateSequence, request)
        info = SequenceInfo(
            sequence=sequence,
            namespace=namespace,
            model=answer.model,
            layers=answer.layers,
            query_heads=answer.query_heads,
            kv_heads=answer.kv_heads,
            head_dim=answer.head_dim,
            placement_version=answer.placement_version,
            nodes=tuple(answer.nodes),
            replication=answer.replication,
        )
        with self._lock:
            self._geometry[(namespace, sequence)] = info
        return info

    def append(
        self,
        sequence: int,
        layer: int,
        keys: Any,
        values: Any,
        observation_queries: Any = None,
        namespace: int = 0,
    ) -> int:
        """Appends one layer's K/V, ``[tokens][kv_heads][head_dim]`` each (fp16 on the wire);
        ``observation_queries`` ``[rows][query_heads][head_dim]`` (a prefill's last queries)
        let HeteroCache profile heads. Returns the tokens the layer holds."""
        k = _to_numpy(keys, np.float16)
        v = _to_numpy(values, np.float16)
        info = self._info(sequence, namespace)
        if k.ndim != 3 or k.shape[0] == 0 or k.shape != v.shape or (
            k.shape[1:] != (info.kv_heads, info.head_dim)
        ):
            # Refused with the shape it expects (or by the worker, for no tokens).
            request = self._append_request(sequence, layer, k, v, observation_queries, namespace)
            return int(self._call("Append", self._stub.Append, request).tokens)
        # Long prefills go in pieces under the message limit; the observation with the last.
        row = max(1, int(np.prod(k.shape[1:])) * 2)
        per_piece = max(1, APPEND_PIECE_BYTES // row)
        tokens = 0
        for start in range(0, k.shape[0], per_piece):
            last = start + per_piece >= k.shape[0]
            request = self._append_request(
                sequence, layer, k[start:start + per_piece], v[start:start + per_piece],
                observation_queries if last else None, namespace,
            )
            tokens = int(self._call("Append", self._stub.Append, request).tokens)
        return tokens

    def append_attend(
        self,
        sequence: int,
        layer: int,
        keys: Any,
        values: Any,
        queries: Any,
        with_selection: bool = False,
        namespace: int = 0,
    ) -> AttendResult:
        """A decode step of one layer in one round trip: :meth:`append` of ``keys`` and
        ``values`` then :meth:`attend` of ``queries``."""
        request = engine_pb2.AppendAttendRequest(
            append=self._append_request(sequence, layer, keys, values, None, namespace),
            attend=self._attend_request(sequence, layer, queries, with_selection, namespace),
        )
        answer = self._call("AppendAttend", self._stub.AppendAttend, request)
        return self._attend_result(sequence, namespace, layer, answer, queries)

    def _append_request(
        self,
        sequence: int,
        layer: int,
        keys: Any,
        values: Any,
        observation_queries: Any,
        namespace: int,
    ) -> engine_pb2.AppendRequest:
        info = self._info(sequence, namespace)
        self._check_layer(info, layer)
        k = _to_numpy(keys, np.float16)
        v = _to_numpy(values, np.float16)
        expected = ("tokens", info.kv_heads, info.head_dim)
        for name, t in (("keys", k), ("values", v)):
            if t.ndim != 3 or t.shape[1:] != expected[1:]:
                raise HeteroKVError(
                    "invalid_argument",
                    f"layer {layer}: {name} of shape {tuple(t.shape)}, expected "
                    f"[tokens][{info.kv_heads}][{info.head_dim}]",
                    self.address,
                )
        if k.shape != v.shape:
            raise HeteroKVError(
                "invalid_argument",
                f"layer {layer}: keys {tuple(k.shape)} and values {tuple(v.shape)} differ",
                self.address,
            )
        request = engine_pb2.AppendRequest(
            ref=self._ref(sequence, namespace),
            layer=layer,
            tokens=k.shape[0],
            keys=k.tobytes(),
            values=v.tobytes(),
        )
        if observation_queries is not None:
            q = _to_numpy(observation_queries, np.float32)
            if q.ndim != 3 or q.shape[1:] != (info.query_heads, info.head_dim):
                raise HeteroKVError(
                    "invalid_argument",
                    f"layer {layer}: observation queries of shape {tuple(q.shape)}, expected "
                    f"[rows][{info.query_heads}][{info.head_dim}]",
                    self.address,
                )
            request.observation_rows = q.shape[0]
            request.observation_queries = q.tobytes()
        return request

    def attend(
        self,
        sequence: int,
        layer: int,
        queries: Any,
        with_selection: bool = False,
        namespace: int = 0,
    ) -> AttendResult:
        """One layer's attention for ``queries`` ``[query_heads][head_dim]`` over the sequence so
        far. The first call of a sequence ends its prefill (heads profiled, budgets set)."""
        request = self._attend_request(sequence, layer, queries, with_selection, namespace)
        answer = self._call("Attend", self._stub.Attend, request)
        return self._attend_result(sequence, namespace, layer, answer, queries)

    def _attend_request(
        self, sequence: int, layer: int, queries: Any, with_selection: bool, namespace: int
    ) -> engine_pb2.AttendRequest:
        info = self._info(sequence, namespace)
        self._check_layer(info, layer)
        q = _to_numpy(queries, np.float32)
        if q.shape != (info.query_heads, info.head_dim):
            raise HeteroKVError(
                "invalid_argument",
                f"layer {layer}: queries of shape {tuple(q.shape)}, expected "
                f"[{info.query_heads}][{info.head_dim}]",
                self.address,
            )
        return engine_pb2.AttendRequest(
            ref=self._ref(sequence, namespace),
            layer=layer,
            queries=q.tobytes(),
            with_selection=with_selection,
        )

    def _attend_result(
        self, sequence: int, namespace: int, layer: int, answer: Any, queries: Any
    ) -> AttendResult:
        info = self._info(sequence, namespace)
        out = np.frombuffer(answer.output, dtype=np.float32)
        if out.size != info.query_heads * info.head_dim:
            raise HeteroKVError(
                "internal",
                f"layer {layer}: the worker answered {out.size} floats, expected "
                f"{info.query_heads * info.head_dim}",
                self.address,
            )
        out = out.reshape(info.query_heads, info.head_dim)
        output: Any = out
        if _is_torch(queries):
            import torch

            output = torch.from_numpy(out.copy()).to(queries.device)
        return AttendResult(
            output=output,
            bytes_moved=int(answer.bytes_moved),
            selections=tuple(tuple(s.tokens) for s in answer.selections),
        )

    def release(self, sequence: int, namespace: int = 0) -> int:
        """Drops the sequence on the worker, the memory nodes and the coordinator; returns the
        bytes freed."""
        answer = self._call("Release", self._stub.Release, self._ref(sequence, namespace))
        with self._lock:
            self._geometry.pop((namespace, sequence), None)
        return int(answer.released_bytes)

    def stats(self, sequence: int, namespace: int = 0) -> SequenceStats:
        """The worker's figures of the sequence."""
        s = self._call("GetSequenceStats", self._stub.GetSequenceStats, self._ref(sequence, namespace))
        return SequenceStats(
            tokens=s.tokens,
            prefill_tokens=s.prefill_tokens,
            policy=s.policy,
            worker_bytes=s.worker_bytes,
            memory_tier_bytes=s.memory_tier_bytes,
            full_kv_bytes=s.full_kv_bytes,
            decode_steps=s.decode_steps,
            bytes_moved=s.bytes_moved,
            decode_bytes_moved=s.decode_bytes_moved,
            kept_tokens=s.kept_tokens,
            context_tokens=s.context_tokens,
            refreshes=s.refreshes,
            failovers=s.failovers,
            unshipped_rows=s.unshipped_rows,
            stored_rows=s.stored_rows,
            under_replicated_shards=s.under_replicated_shards,
            heads=tuple(
                HeadStats(h.layer, h.kv_head, h.role, h.cap, h.resident_bytes, h.pivot)
                for h in s.heads
            ),
        )

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _ref(sequence: int, namespace: int) -> coordinator_pb2.SequenceRef:
        if not 0 <= sequence < 1 << 64:
            raise HeteroKVError("invalid_argument", f"sequence {sequence} is not a uint64")
        if not 0 <= namespace < 1 << 32:
            raise HeteroKVError("invalid_argument", f"namespace {namespace} is not a uint32")
        return coordinator_pb2.SequenceRef(namespace=namespace, sequence=sequence)

    def _info(self, sequence: int, namespace: int) -> SequenceInfo:
        with self._lock:
            info = self._geometry.get((namespace, sequence))
        if info is None:
            raise HeteroKVError(
                "not_found",
                f"sequence {sequence} (namespace {namespace}) was not created by this client",
                self.address,
            )
        return info

    def _check_layer(self, info: SequenceInfo, layer: int) -> None:
        if not 0 <= layer < info.layers:
            raise HeteroKVError(
                "invalid_argument",
                f"layer {layer} is outside the sequence's 0...{info.layers - 1}",
                self.address,
            )

    def _call(self, name: str, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise HeteroKVError.from_rpc(error, self.address, name) from None
