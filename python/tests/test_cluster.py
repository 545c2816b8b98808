"""`hkv cluster up` as engines start it: ready line, clean stop, no orphan when killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from heterokv import EngineClient, LocalCluster
from heterokv.cluster import wait_for

from conftest import SMALL_MODEL


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_cluster_up_serves_and_stops_its_children_on_sigterm(hkv, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(SMALL_MODEL))
    up = subprocess.Popen(
        [hkv, "cluster", "up", "--model-config", str(config), "--memnodes", "2",
         "--capacity", "64MiB", "--directory", str(tmp_path / "c")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        line = up.stdout.readline().decode()
        assert line.startswith("ready engine="), up.stderr.read().decode()
        fields = dict(p.split("=", 1) for p in line.split()[1:])
        children = children_of(up.pid)
        assert len(children) == 4  # coordinator, two memory nodes, worker
        with EngineClient(fields["engine"]) as client:
            info = client.create_sequence(5, max_tokens=32)
            assert info.layers == 2 and len(info.nodes) >= 1
            client.release(5)
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
        assert not any(alive(c) for c in children)
    finally:
        if up.poll() is None:
            up.kill()


def test_children_stop_when_cluster_up_is_killed(hkv, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(SMALL_MODEL))
    up = subprocess.Popen(
        [hkv, "cluster", "up", "--model-config", str(config), "--memnodes", "1",
         "--capacity", "64MiB", "--directory", str(tmp_path / "c")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert up.stdout.readline().startswith(b"ready ")
    children = children_of(up.pid)
    assert len(children) == 3
    up.kill()
    up.wait()
    wait_for(lambda: not any(alive(c) for c in children), 30, "the children did not stop")


def test_an_embedded_cluster_stops_with_its_owner(hkv):
    cluster = LocalCluster(SMALL_MODEL, memnodes=1, capacity="64MiB", hkv=hkv)
    up = cluster.process.pid
    children = children_of(up)
    assert len(children) == 3
    cluster.stop()
    assert not alive(up)
    wait_for(lambda: not any(alive(c) for c in children), 30, "the children did not stop")


def test_a_bad_model_config_is_refused_naming_the_key(hkv, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"num_hidden_layers": 2, "num_attention_heads": 3, "hidden_size": 100}))
    run = subprocess.run(
        [hkv, "cluster", "up", "--model-config", str(config)], capture_output=True, timeout=60
    )
    assert run.returncode != 0
    assert b"head_dim" in run.stderr


def role_of(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        args = f.read().split(b"\0")
    return args[1].decode() if len(args) > 1 else ""


def prefilled(client: EngineClient, sequence: int, tokens: int = 400):
    import numpy as np

    rng = np.random.default_rng(sequence % 1000)
    client.create_sequence(sequence, max_tokens=1024)
    for layer in range(2):
        keys = rng.standard_normal((tokens, 2, 32)).astype(np.float32)
        client.append(sequence, layer, keys, keys)
    return rng


def test_a_worker_that_dies_mid_decode_is_an_error_naming_it(hkv):
    import numpy as np
    import pytest

    from heterokv import HeteroKVError

    with LocalCluster(SMALL_MODEL, memnodes=1, capacity="64MiB", hkv=hkv) as cluster:
        worker = next(p for p in children_of(cluster.process.pid) if role_of(p) == "worker")
        with EngineClient(cluster.engine, timeout=5) as client:
            rng = prefilled(client, 21)
            step = rng.standard_normal((1, 2, 32)).astype(np.float32)
            q = rng.standard_normal((4, 32)).astype(np.float32)
            client.append_attend(21, 0, step, step, q)
            os.kill(worker, signal.SIGKILL)
            started = time.monotonic()
            with pytest.raises(HeteroKVError) as error:
                client.append_attend(21, 1, step, step, q)
            assert time.monotonic() - started < 10  # the deadline, not a hang
            assert error.value.code in ("unavailable", "deadline_exceeded")
            assert cluster.engine in str(error.value)


def test_a_memory_node_killed_with_replication_2_does_not_interrupt_decoding(hkv):
    import numpy as np

    with LocalCluster(
        SMALL_MODEL, memnodes=2, replication=2, capacity="64MiB", hkv=hkv
    ) as cluster:
        nodes = [p for p in children_of(cluster.process.pid) if role_of(p) == "memnode"]
        assert len(nodes) == 2
        with EngineClient(cluster.engine, timeout=30) as client:
            rng = prefilled(client, 22)
            q = rng.standard_normal((4, 32)).astype(np.float32)
            for layer in range(2):
                step = rng.standard_normal((1, 2, 32)).astype(np.float32)
                client.append_attend(22, layer, step, step, q)
            before = client.stats(22)
            # The prompt's rows (400 tokens x 2 KV heads x 2 layers) are on both replicas.
            wait_for(lambda: client.stats(22).stored_rows >= 1600, 30, "rows were not shipped")
            os.kill(nodes[0], signal.SIGKILL)
            for _ in range(4):  # decode goes on from the surviving replica
                for layer in range(2):
                    step = rng.standard_normal((1, 2, 32)).astype(np.float32)
                    out = client.append_attend(22, layer, step, step, q).output
                    assert np.isfinite(out).all()
            after = client.stats(22)
            assert after.decode_steps > before.decode_steps
            assert after.failovers > before.failovers  # the dead node's shards moved


def test_an_in_process_cluster_serves_the_engine_api(hkv):
    import numpy as np

    with LocalCluster(SMALL_MODEL, memnodes=2, capacity="64MiB", in_process=True, hkv=hkv) as c:
        assert children_of(c.process.pid) == []  # every role in the one child
        with EngineClient(c.engine) as client:
            rng = prefilled(client, 23)
            step = rng.standard_normal((1, 2, 32)).astype(np.float32)
            q = rng.standard_normal((4, 32)).astype(np.float32)
            out = client.append_attend(23, 0, step, step, q).output
            assert out.shape == (4, 32) and np.isfinite(out).all()
            assert client.stats(23).memory_tier_bytes > 0
