"""The engine API from Python against a real worker (an embedded cluster of hkv processes)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from heterokv import EngineClient, HeteroKVError


def exact_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Softmax attention of q [H][d] over k, v [n][Hkv][d] (GQA), in float64."""
    heads, d = q.shape
    group = heads // k.shape[1]
    out = np.zeros((heads, d))
    for h in range(heads):
        keys = k[:, h // group, :].astype(np.float64)
        scores = keys @ q[h].astype(np.float64) / np.sqrt(d)
        w = np.exp(scores - scores.max())
        out[h] = (w / w.sum()) @ v[:, h // group, :].astype(np.float64)
    return out


def test_round_trip_matches_exact_attention(small_cluster):
    rng = np.random.default_rng(1)
    with EngineClient(small_cluster.engine, timeout=30) as client:
        seq = random.getrandbits(40) + 1
        info = client.create_sequence(seq, max_tokens=512)
        assert (info.layers, info.query_heads, info.kv_heads, info.head_dim) == (2, 4, 2, 32)
        tokens = 40
        keys = rng.standard_normal((tokens, 2, 32)).astype(np.float32)
        values = rng.standard_normal((tokens, 2, 32)).astype(np.float32)
        obs = rng.standard_normal((8, 4, 32)).astype(np.float32)
        for layer in range(2):
            assert client.append(seq, layer, keys, values, observation_queries=obs) == tokens
        q = rng.standard_normal((4, 32)).astype(np.float32)
        result = client.attend(seq, 0, q)
        assert result.output.shape == (4, 32) and result.output.dtype == np.float32
        expected = exact_attention(q, keys.astype(np.float16), values.astype(np.float16))
        # tau 0.985 keeps the tokens holding 98.5% of the mass and estimates the rest: close to
        # exact attention (a wrong answer, such as the mean of the values, is at about 1).
        error = np.linalg.norm(result.output - expected) / np.linalg.norm(expected)
        assert error < 0.1, error
        mean = np.broadcast_to(values.mean(0).repeat(2, 0), expected.shape)
        assert np.linalg.norm(mean - expected) / np.linalg.norm(expected) > 0.5
        stats = client.stats(seq)
        assert stats.tokens >= tokens
        assert stats.full_kv_bytes > 0
        assert client.release(seq) >= 0
        with pytest.raises(HeteroKVError) as gone:
            client.stats(seq)
        assert gone.value.code == "not_found"


def test_torch_inputs_in_any_float_dtype(small_cluster):
    torch = pytest.importorskip("torch")
    with EngineClient(small_cluster.engine) as client:
        seq = random.getrandbits(40) + 1
        client.create_sequence(seq, max_tokens=64)
        gen = torch.Generator().manual_seed(2)
        k = torch.randn(10, 2, 32, generator=gen, dtype=torch.float32).to(torch.bfloat16)
        v = torch.randn(10, 2, 32, generator=gen, dtype=torch.float32)
        for layer in range(2):
            client.append(seq, layer, k, v)
        q = torch.randn(4, 32, generator=gen).to(torch.bfloat16)
        out = client.attend(seq, 1, q).output
        assert isinstance(out, torch.Tensor) and out.shape == (4, 32)
        assert out.dtype == torch.float32
        client.release(seq)


def test_refusals_name_the_layer_and_the_expected_shape(small_cluster):
    with EngineClient(small_cluster.engine) as client:
        seq = random.getrandbits(40) + 1
        client.create_sequence(seq, max_tokens=64)
        with pytest.raises(HeteroKVError) as shape:
            client.append(seq, 1, np.zeros((3, 2, 16)), np.zeros((3, 2, 16)))
        assert shape.value.code == "invalid_argument"
        assert "layer 1" in str(shape.value) and "[tokens][2][32]" in str(shape.value)
        with pytest.raises(HeteroKVError) as layer:
            client.append(seq, 7, np.zeros((3, 2, 32)), np.zeros((3, 2, 32)))
        assert "layer 7" in str(layer.value)
        with pytest.raises(HeteroKVError) as query:
            client.attend(seq, 0, np.zeros((2, 32)))
        assert "[4][32]" in str(query.value)
        # The worker refuses what reaches it: an attend before any token.
        with pytest.raises(HeteroKVError) as empty:
            client.attend(seq, 0, np.zeros((4, 32)))
        assert empty.value.address == small_cluster.engine
        client.release(seq)
        with pytest.raises(HeteroKVError) as unknown:
            client.append(seq, 0, np.zeros((1, 2, 32)), np.zeros((1, 2, 32)))
        assert unknown.value.code == "not_found"


def test_a_dead_worker_is_an_error_naming_it_not_a_hang():
    # Nothing listens on this port: the call fails within its deadline, naming the address.
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()
    with EngineClient(address, timeout=3) as client:
        with pytest.raises(HeteroKVError) as error:
            client.create_sequence(1, max_tokens=16)
    assert error.value.code in ("unavailable", "deadline_exceeded")
    assert address in str(error.value)


def test_append_attend_is_append_then_attend_in_one_call(small_cluster):
    rng = np.random.default_rng(3)
    keys = rng.standard_normal((300, 2, 32)).astype(np.float32)
    values = rng.standard_normal((300, 2, 32)).astype(np.float32)
    step_k = rng.standard_normal((1, 2, 32)).astype(np.float32)
    step_v = rng.standard_normal((1, 2, 32)).astype(np.float32)
    q = rng.standard_normal((4, 32)).astype(np.float32)
    with EngineClient(small_cluster.engine) as client:
        fused, split = random.getrandbits(40) + 1, random.getrandbits(40) + 1
        for seq in (fused, split):
            client.create_sequence(seq, max_tokens=512)
            for layer in range(2):
                client.append(seq, layer, keys, values)
            client.attend(seq, 0, q)  # ends the prefill
        one = client.append_attend(fused, 1, step_k, step_v, q)
        client.append(split, 1, step_k, step_v)
        two = client.attend(split, 1, q)
        np.testing.assert_array_equal(one.output, two.output)
        assert client.stats(fused).tokens == client.stats(split).tokens
        # The two halves must name the same step.
        from heterokv.v1 import engine_pb2

        request = engine_pb2.AppendAttendRequest(
            append=client._append_request(fused, 1, step_k, step_v, None, 0),
            attend=client._attend_request(fused, 0, q, False, 0),
        )
        with pytest.raises(HeteroKVError) as mismatch:
            client._call("AppendAttend", client._stub.AppendAttend, request)
        assert mismatch.value.code == "invalid_argument" and "different steps" in str(mismatch.value)
        client.release(fused)
        client.release(split)


def test_a_long_prefill_goes_in_pieces_and_a_refused_step_appends_nothing(
    small_cluster, monkeypatch
):
    import heterokv.client as client_module

    rng = np.random.default_rng(4)
    # Ten tokens a piece: 2 KV heads x 32 dims x 2 bytes x 10.
    monkeypatch.setattr(client_module, "APPEND_PIECE_BYTES", 2 * 32 * 2 * 10)
    with EngineClient(small_cluster.engine) as client:
        seq = random.getrandbits(40) + 1
        client.create_sequence(seq, max_tokens=256)
        keys = rng.standard_normal((95, 2, 32)).astype(np.float32)
        obs = rng.standard_normal((4, 4, 32)).astype(np.float32)
        assert client.append(seq, 0, keys, keys, observation_queries=obs) == 95
        assert client.append(seq, 1, keys, keys) == 95
        client.attend(seq, 0, rng.standard_normal((4, 32)).astype(np.float32))
        held = client.stats(seq).tokens
        # An AppendAttend whose queries are the wrong size is refused before the append.
        from heterokv.v1 import engine_pb2

        step = keys[:1]
        request = engine_pb2.AppendAttendRequest(
            append=client._append_request(seq, 0, step, step, None, 0),
            attend=engine_pb2.AttendRequest(
                ref=client._ref(seq, 0), layer=0, queries=b"\0" * 12
            ),
        )
        with pytest.raises(HeteroKVError, match="nothing was appended"):
            client._call("AppendAttend", client._stub.AppendAttend, request)
        assert client.stats(seq).tokens == held
        client.release(seq)
