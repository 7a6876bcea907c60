"""Executors: where independent units of work (sensitivity trials, calibration shards) run.

An ``Executor`` has one operation, ``map(fn, items, shared=...)``: ``fn(shared, item)`` for every
item, the results in the order of the items, whichever worker ran each. Work must be picklable:
``fn`` a module-level function, ``items`` and ``shared`` plain data (bytes, numpy arrays, dicts).
``shared`` is what every item needs (a serialized model, its feeds and reference outputs): it is sent
**once per worker**, not once per item, and a worker keeps it while the same object is passed again.

- ``SerialExecutor``: in this process, one item after the other.
- ``ProcessExecutor(workers)``: a local pool of worker processes started with ``spawn`` (onnxruntime
  and ``fork`` do not mix: a forked copy of a process whose onnxruntime thread pools exist can
  deadlock). The pool lasts as long as the executor; the first ``shared`` goes to each worker
  through the pool's initializer, a later one through a temporary file each worker reads once. The
  workers do not import the caller's main module, so a script needs no ``if __name__ ==
  "__main__":`` guard.
- ``RayExecutor(address)``: Ray tasks (the ``ray`` extra, ``pip install 'qonnx[ray]'``), one CPU
  each. ``address=None`` starts a new local Ray instance (or joins the one ``RAY_ADDRESS`` names);
  ``"ray://HOST:PORT"`` connects to an existing cluster, whose workers must have qonnx installed.
  ``shared`` goes into Ray's object store once (``ray.put``); each worker process fetches it on its
  first item and keeps it. A Ray instance already initialized in this process is used as it is.

Each executor says how many onnxruntime threads one unit of work should use (``threads``): a
process pool splits the CPUs between its workers, a Ray task has one CPU, the serial executor
leaves onnxruntime its default. Results do not depend on it (checked by the tests).

Starting workers costs time (a spawned worker imports numpy and onnxruntime and reads the shared
payload: about 1-2 s), so callers ask ``worth(items, seconds_each)`` first: the work goes to the
workers only when running it there saves more than ``startup_s``, and stays in this process
otherwise (see ``qonnx.trials.Trials.scores``).

``make_executor(spec, workers)`` reads the command line's ``--executor`` and ``--workers``.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import pickle
import re
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from qonnx.errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "Executor",
    "SerialExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "EXECUTOR_SPECS",
    "check_available",
    "check_spec",
    "default_workers",
    "make_executor",
]

EXECUTOR_SPECS = ("serial", "local", "ray", "ray://HOST:PORT")
_RAY_ADDRESS = re.compile(r"ray://[^\s:/]+:\d{1,5}")
_RAY_MISSING = "the ray executor needs Ray: pip install 'qonnx[ray]'"


def default_workers() -> int:
    """Worker processes of the default local pool: two, or one on a one-CPU machine."""
    return max(1, min(2, os.cpu_count() or 1))


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------
# In the worker: the shared payload of the current work, by token


_WORKER_SHARED: dict[str, Any] = {}
_KEEP = 2  # payloads a worker keeps (the current one and the one before)


def _remember(token: str, value: Any) -> Any:
    _WORKER_SHARED[token] = value
    while len(_WORKER_SHARED) > _KEEP:
        del _WORKER_SHARED[next(iter(_WORKER_SHARED))]
    return value


def _install(token: str, value: Any) -> None:
    """Process-pool initializer: keep the payload for the tasks to come."""
    _remember(token, value)


def _call_shared(fn: Callable[[Any, Any], Any], token: str | None, path: str | None, item: Any) -> Any:
    """A process-pool task: the payload ``token`` from the initializer, or from ``path`` on first sight."""
    if token is None:
        return fn(None, item)
    if token not in _WORKER_SHARED:
        with open(path, "rb") as f:  # type: ignore[arg-type]
            _remember(token, pickle.load(f))
    return fn(_WORKER_SHARED[token], item)


def _ray_call(fn: Callable[[Any, Any], Any], token: str | None, holder: list, item: Any) -> Any:
    """A Ray task: ``holder`` wraps the payload's object reference, so that Ray does not fetch and
    deserialize it for every task; a worker fetches it once."""
    if token is None:
        return fn(None, item)
    if token not in _WORKER_SHARED:
        import ray

        _remember(token, ray.get(holder[0]))
    return fn(_WORKER_SHARED[token], item)


@contextlib.contextmanager
def _main_hidden():
    """While worker processes are spawned: hide the main module from them.

    A spawned process re-imports the parent's ``__main__`` (by path or module name) before its
    first task, which re-runs a script that has no ``if __name__ == "__main__":`` guard (or
    ``python -m qonnx``'s command line) in every worker. The workers run only qonnx's own
    functions, so they need nothing from it.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {key: main.__dict__[key] for key in ("__file__", "__spec__") if key in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


# ----------------------------------------------------------------------------------------------
# Executors


class Executor(abc.ABC):
    """Runs ``fn(shared, item)`` for each item; results in order (see the module docstring).

    Attributes:
        name: how the command line names it (``serial``, ``local``, ``ray``, ``ray://HOST:PORT``).
        workers: units of work that run at once.
        threads: onnxruntime intra-op threads for one unit of work (None: onnxruntime's default).
        startup_s: estimated seconds to start the workers, weighed by ``worth``.
    """

    name: str = ""
    workers: int = 1
    threads: int | None = None
    startup_s: float = 0.0

    @abc.abstractmethod
    def map(self, fn: Callable[[Any, Any], Any], items: Sequence[Any], *, shared: Any = None) -> list[Any]:
        """``[fn(shared, item) for item in items]``, computed by the workers."""

    def worth(self, items: int, seconds_each: float, *, shared: Any = None) -> bool:
        """Whether ``items`` units of ``seconds_each`` finish sooner on the workers than in this
        process: the time saved, ``items · seconds_each · (1 - 1 / workers)``, exceeds the start-up
        (none when the workers already hold ``shared``)."""
        if self.workers < 2 or items < 2:
            return False
        startup = 0.0 if self.ready(shared) else self.startup_s
        return items * seconds_each * (1 - 1 / self.workers) > startup

    def ready(self, shared: Any = None) -> bool:
        """Whether the workers are started and hold ``shared``."""
        return False

    def close(self) -> None:
        """Stop the workers this executor started."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, workers={self.workers})"


class SerialExecutor(Executor):
    """Everything in this process, in order."""

    name = "serial"

    def map(self, fn, items, *, shared=None):
        return [fn(shared, item) for item in items]

    def worth(self, items, seconds_each, *, shared=None):
        return False


class ProcessExecutor(Executor):
    """A local pool of ``workers`` spawned processes, each onnxruntime session with
    ``max(1, CPUs // workers)`` threads. The pool starts on the first ``map`` and lasts until
    ``close``. The first ``shared`` payload goes to each worker through the pool's initializer; a
    later one is written once to a temporary file, which each worker reads on its first item."""

    name = "local"

    def __init__(self, workers: int | None = None, *, startup_s: float = 2.0, start_method: str = "spawn") -> None:
        workers = default_workers() if workers is None else workers
        if workers < 1:
            raise UserError(f"--workers must be a positive number, not {workers}")
        self.workers, self.startup_s = workers, startup_s
        self.threads = max(1, _cpus() // workers)
        self._context = multiprocessing.get_context(start_method)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._shared: Any = None  # the latest payload (kept alive: its identity is the key)
        self._token: str | None = None
        self._path: str | None = None  # where a payload sent after the start lies
        self._folder: tempfile.TemporaryDirectory | None = None

    def ready(self, shared=None):
        return self._pool is not None and (shared is None or shared is self._shared)

    def _start(self, shared: Any) -> None:
        self._token = None if shared is None else uuid.uuid4().hex
        self._shared, self._path = shared, None
        initializer, initargs = (None, ()) if shared is None else (_install, (self._token, shared))
        self._pool = concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=self._context, initializer=initializer, initargs=initargs
        )

    def _send(self, shared: Any) -> None:
        """A new payload for running workers: pickled once into a file that each reads once."""
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="qonnx-pool-")
        if self._path is not None:
            os.unlink(self._path)  # the previous payload: its map is over
        token = uuid.uuid4().hex
        path = os.path.join(self._folder.name, f"{token}.pickle")
        with open(path, "wb") as f:
            pickle.dump(shared, f, protocol=pickle.HIGHEST_PROTOCOL)
        self._shared, self._token, self._path = shared, token, path

    def map(self, fn, items, *, shared=None):
        if not items:
            return []
        if self._pool is None:
            self._start(shared)
        elif shared is not None and shared is not self._shared:
            self._send(shared)
        assert self._pool is not None
        token = None if shared is None else self._token
        path = None if shared is None else self._path
        with _main_hidden():  # the pool spawns its processes on the first submits
            futures = [self._pool.submit(_call_shared, fn, token, path, item) for item in items]
        try:
            return [future.result() for future in futures]
        except concurrent.futures.process.BrokenProcessPool as exc:
            self.close()
            raise RuntimeError(f"a worker process of the local executor died: {exc}") from exc
        finally:
            for future in futures:
                future.cancel()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._folder is not None:
            self._folder.cleanup()
        self._pool, self._shared, self._token, self._path, self._folder = None, None, None, None, None


class RayExecutor(Executor):
    """Ray tasks of one CPU each, on a local Ray instance (``address=None``) or an existing cluster
    (``"ray://HOST:PORT"``, or ``"auto"``). ``workers``: the CPUs of a local instance this executor
    starts (default: all); on a cluster, the cluster's CPUs decide."""

    def __init__(self, address: str | None = None, workers: int | None = None, *, startup_s: float = 5.0) -> None:
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be a positive number, not {workers}")
        self.address, self.startup_s = address, startup_s
        self.name = address or "ray"
        self._requested = workers
        self.workers = workers or (_cpus() if address is None else 2)
        self.threads = 1
        self._started = False  # this executor called ray.init, so close() shuts Ray down
        self._ray: Any = None
        self._remote: Any = None
        self._shared: Any = None
        self._token: str | None = None
        self._ref: Any = None

    def _connect(self) -> Any:
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError:
            raise UserError(_RAY_MISSING) from None
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
            address = self.address
            if address is None and not os.environ.get("RAY_ADDRESS"):
                # A new local instance: "local", not None, which would join the cluster last started
                # on this machine (/tmp/ray/ray_current_cluster), even one that died since.
                address = "local"
                if self._requested is not None:
                    options["num_cpus"] = self._requested
            try:
                ray.init(address=address, **options)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UserError(f"cannot reach the Ray cluster at {self.address or 'a local instance'}: {str(exc).splitlines()[0]}") from exc
            self._started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, cpus)
        self._ray = ray
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_ray_call)
        return ray

    def ready(self, shared=None):
        return self._ray is not None and (shared is None or shared is self._shared)

    def worth(self, items, seconds_each, *, shared=None):
        if self._ray is None:  # the cluster's size is known once connected
            if items < 2:
                return False
            startup = self.startup_s
            return items * seconds_each * (1 - 1 / max(self.workers, 2)) > startup
        return super().worth(items, seconds_each, shared=shared)

    def map(self, fn, items, *, shared=None):
        if not items:
            return []
        ray = self._connect()
        if shared is not None and shared is not self._shared:
            self._shared, self._token, self._ref = shared, uuid.uuid4().hex, ray.put(shared)
        token = None if shared is None else self._token
        holder = [self._ref] if shared is not None else []
        try:
            return ray.get([self._remote.remote(fn, token, holder, item) for item in items])
        except ray.exceptions.RayTaskError as exc:  # a UserError in a task reaches the caller as itself
            cause = getattr(exc, "cause", None)
            if isinstance(cause, UserError):
                raise cause from None
            raise

    def close(self):
        if self._ray is not None and self._started:
            self._ray.shutdown()
        self._ray = self._remote = self._shared = self._token = self._ref = None
        self._started = False


def check_spec(spec: str | None) -> str | None:
    """``spec`` if it names an executor (``EXECUTOR_SPECS``), else a UserError that names it."""
    if spec is None or spec in ("serial", "local", "ray") or _RAY_ADDRESS.fullmatch(spec):
        return spec
    raise UserError(f"unknown executor {spec!r}: choose serial, local (a process pool, the default), ray (a local Ray instance) or ray://HOST:PORT (a Ray cluster)")


def check_available(spec: str | None) -> None:
    """A UserError, before any work, when ``spec`` names Ray and Ray is not installed."""
    import importlib.util

    if spec is not None and spec.startswith("ray") and importlib.util.find_spec("ray") is None:
        raise UserError(f"--executor {spec}: {_RAY_MISSING}")


def make_executor(spec: str | None = None, workers: int | None = None) -> Executor:
    """The executor ``spec`` names: ``serial``, ``local`` (a process pool of ``workers``, default
    ``default_workers()``; None means this), ``ray`` (a local Ray instance of ``workers`` CPUs) or
    ``ray://HOST:PORT`` (a Ray cluster). A bad spec or worker count is a UserError."""
    check_spec(spec)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UserError(f"--workers must be a positive number, not {workers!r}")
    if spec == "serial":
        return SerialExecutor()
    if spec is None or spec == "local":
        return ProcessExecutor(workers)
    return RayExecutor(None if spec == "ray" else spec, workers)
