"""An embedded HeteroKV cluster: ``hkv cluster up`` as a child process of this one.

The cluster (a coordinator, memory nodes and a worker, each a child of ``hkv cluster up``)
runs on free loopback ports until :meth:`LocalCluster.stop`, garbage collection or the end
of this interpreter; if this process is killed, ``hkv cluster up`` notices (it is given
``HKV_PARENT_PID``) and stops its children.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Mapping

from heterokv.errors import HeteroKVError

__all__ = ["LocalCluster", "find_hkv"]


def find_hkv() -> str:
    """The ``hkv`` executable: ``$HKV_BIN``, else ``hkv`` on ``PATH``, else a checkout's
    release build (``.build/release/hkv`` next to ``python/`` or below the working
    directory)."""
    explicit = os.environ.get("HKV_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise HeteroKVError("not_found", f"HKV_BIN={explicit} is not an executable file")
        return explicit
    on_path = shutil.which("hkv")
    if on_path:
        return on_path
    # This checkout's build: next to an editable install, or below the working directory
    # (the README runs from the checkout's root).
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        checkout = root / ".build" / "release" / "hkv"
        if os.access(checkout, os.X_OK):
            return str(checkout)
    raise HeteroKVError(
        "not_found",
        "no hkv executable: set HKV_BIN, put hkv on PATH, or build this checkout's "
        "(swift build -c release --product hkv)",
    )


def _stop(process: subprocess.Popen[bytes], folder: str | None) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


class LocalCluster:
    """``hkv cluster up`` for a transformers model config (a mapping as ``config.to_dict()``
    gives, or a ``config.json`` path) or for a cluster file, started and awaited until ready.

    ``engine`` is the worker's engine API address. ``policy``, ``budget``, ``memnodes``,
    ``replication``, ``capacity`` and ``max_context`` are passed to ``hkv cluster up`` (its
    defaults are the project's recommended settings). ``in_process`` runs every role in the
    one child process, the worker reaching the memory nodes without sockets (a model config
    only).
    """

    def __init__(
        self,
        model_config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        cluster_file: str | os.PathLike[str] | None = None,
        policy: str = "hcattention",
        budget: float = 0.125,
        memnodes: int = 2,
        replication: int = 1,
        capacity: str = "4GiB",
        max_context: int = 8192,
        in_process: bool = False,
        hkv: str | None = None,
        ready_timeout: float = 120.0,
    ) -> None:
        if (model_config is None) == (cluster_file is None):
            raise ValueError("give exactly one of model_config and cluster_file")
        if in_process and cluster_file is not None:
            raise ValueError("in_process needs a model config, not a cluster file")
        self._folder = tempfile.mkdtemp(prefix="heterokv-")
        args = [hkv or find_hkv(), "cluster", "up", "--directory", self._folder]
        if cluster_file is not None:
            args += ["--config", os.fspath(cluster_file)]
        else:
            if isinstance(model_config, Mapping):
                path = os.path.join(self._folder, "config.json")
                with open(path, "w") as f:
                    json.dump(dict(model_config), f, default=str)
            else:
                path = os.fspath(model_config)  # type: ignore[arg-type]
            args += [
                "--model-config", path,
                "--policy", policy,
                "--budget", str(budget),
                "--memnodes", str(memnodes),
                "--replication", str(replication),
                "--capacity", capacity,
                "--max-context", str(max_context),
            ]
            if in_process:
                args.append("--in-process")
        env = dict(os.environ, HKV_PARENT_PID=str(os.getpid()))
        self._stderr = open(os.path.join(self._folder, "cluster-up.log"), "wb")
        # A session of its own: a Ctrl-C at this interpreter's terminal is not the cluster's.
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )
        self._finalizer = weakref.finalize(self, _stop, self.process, self._folder)
        fields = self._await_ready(ready_timeout)
        self.engine: str = fields["engine"]
        self.coordinator: str = fields.get("coordinator", "")
        self.config_path: str = fields.get("config", "")

    def _await_ready(self, timeout: float) -> dict[str, str]:
        line: list[bytes] = []
        done = threading.Event()

        def read() -> None:
            assert self.process.stdout is not None
            line.append(self.process.stdout.readline())
            done.set()

        threading.Thread(target=read, daemon=True).start()
        if not done.wait(timeout) or not line or not line[0].startswith(b"ready "):
            log = self.log()
            self.stop()
            raise HeteroKVError(
                "unavailable",
                f"hkv cluster up was not ready within {timeout:.0f} s: {log.strip() or 'no output'}",
            )
        return dict(
            pair.split("=", 1) for pair in line[0].decode().split()[1:] if "=" in pair
        )

    def log(self) -> str:
        """What ``hkv cluster up`` wrote to stderr so far."""
        try:
            with open(os.path.join(self._folder, "cluster-up.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        """Stops every process of the cluster and removes its files (idempotent)."""
        self._finalizer()
        self._stderr.close()

    @property
    def running(self) -> bool:
        """Whether ``hkv cluster up`` is still running."""
        return self.process.poll() is None

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Polls ``predicate`` until it holds or ``timeout`` seconds pass (then raises naming
    ``what``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(0.05)
