"""``--executor ray://HOST:PORT``: the trials on an existing Ray cluster, reached through Ray Client.

The test starts a real one-node Ray cluster with ``ray start --head --block`` (2 CPUs, a Ray Client
server on a free port, token authentication off for this local test cluster) in a process group of
its own, connects to it as a user would, and stops that process group afterwards. It runs in a module
of its own: a Ray instance initialized in this process (``test_executor.py``'s) would be used instead.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import run_text
from qonnx.errors import UserError
from qonnx.executor import RayExecutor, make_executor
from qonnx.models import tiny
from qonnx.trials import Trials


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """``ray://127.0.0.1:PORT`` of a real Ray head started for this module."""
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the head and this client: no token on a local test cluster
    client_port = _free_port()
    ray_command = Path(sys.executable).parent / "ray"
    # Its own temporary folder: the head's sockets and logs, and the address file that a later
    # ray.init() without an address would otherwise try to join.
    temp = tempfile.mkdtemp(prefix="qonnx-ray-", dir="/tmp")  # short: Unix socket paths are limited
    head = subprocess.Popen(
        [str(ray_command), "start", "--head", "--block", f"--temp-dir={temp}", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
         f"--ray-client-server-port={client_port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # the client server accepts connections once the head is up
            try:
                socket.create_connection(("127.0.0.1", client_port), timeout=1).close()
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start --head did not come up (exit {head.poll()})") from None
                time.sleep(0.5)
        yield f"ray://127.0.0.1:{client_port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head's process group: ray start and what it started
        try:
            head.wait(15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait()
        os.environ.pop("RAY_AUTH_MODE", None)
        shutil.rmtree(temp, ignore_errors=True)


def test_trials_on_a_ray_cluster_are_the_serial_trials(cluster):
    model, _, ctx = run_text(tiny.conv_chain(depth=4), "normalize,resolve-policy,calibrate", samples=4, reduce_range=True)
    trials = Trials(model, ctx, [ctx.calib[i] for i in range(3)], "sqnr")
    plans = [{name} for name in trials.candidates] + [None, set()]
    serial = [trials.score(plan) for plan in plans]
    executor = make_executor(cluster)
    assert isinstance(executor, RayExecutor) and executor.address == cluster
    executor.startup_s = 0  # tiny trials: send them anyway
    for attempt in range(3):  # the head's proxy starts a server per client, which can fail on a loaded machine
        try:
            executor.map(pow, [1], shared=2)
            break
        except UserError:
            if attempt == 2:
                raise
            time.sleep(3)
    with executor:
        got = trials.scores(plans, executor)
        assert executor.workers == 2  # the cluster's CPUs
    assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(got, serial))
