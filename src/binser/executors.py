"""Where the work of a study runs: this machine (``local``) or a Ray cluster (``ray``).

One code path decides WHAT is computed: the feature extractors (which files, views and
layers, under which cache keys) and :func:`binser.experiment.evaluate_fold` (which
classifiers). An executor decides only WHERE:

* :class:`LocalExecutor`: features computed in this process (the extractors' own
  single-threaded work items, :mod:`binser.parallel`); folds in joblib worker processes.
* :class:`RayExecutor`: the files whose features are not in the cache are sent, in batches,
  to Ray actors that each hold the driver's backbone (shipped once through the object store,
  so every worker runs the very same weights; moved to a GPU where the cluster has them).
  Each actor runs the plain extractor on its batch and returns the arrays; the driver writes
  them into the feature cache (atomic writes, :class:`binser.cache.FeatureCache`), or keeps
  them in memory without a cache, and then runs the extractor's normal ``extract``, which
  finds every entry ready. Folds run as Ray tasks (retried by Ray when a worker dies); their
  classifier cache (:class:`binser.experiment.FoldResultCache`) is written where each task
  runs: the same folder on one machine or a shared filesystem, otherwise a per-node cache
  (content-addressed, so still correct, just not shared).

A file's features depend only on the file (fixed single-threaded work items, each Whisper
signal encoded alone on the CPU), so the two executors give the same numbers bit for bit on
CPU workers. On a cluster with GPUs the actors run there: features then equal the CPU ones
to float32 rounding only, so they are cached under their own (device-tagged) keys and never
mix with CPU entries. Fine-tuning (``--mode finetune``) and the openSMILE baselines run on
the driver; their folds still go to Ray.

Faults: an actor that dies mid-batch (killed, out of memory, node lost) is replaced by a new
one (up to :data:`ACTOR_RESTARTS` times per worker slot) and its batch is submitted again, up
to :data:`MAX_ATTEMPTS` times. An
interrupted driver keeps every batch already written to the cache; a rerun resumes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import BinserError, ConfigError
from .validation import check_choice, check_int_range

EXECUTORS = ("local", "ray")
RAY_MISSING = ("--executor ray needs the optional package ray "
               "(pip install 'binser[ray]')")
FILES_PER_TASK = 8      # files per actor call: small enough to balance, big enough to batch
MAX_ATTEMPTS = 3        # submissions of one batch before the run gives up
ACTOR_RESTARTS = 4      # replacements of one worker slot's dead feature actor


def ray_available() -> bool:
    """True where ``import ray`` works."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def check_executor(executor: str, ray_address: str | None = None) -> None:
    """Validate ``--executor`` and ``--ray-address`` up front (ConfigError, one line)."""
    check_choice(executor, EXECUTORS, "executor")
    if ray_address is not None and executor != "ray":
        raise ConfigError("--ray-address applies to --executor ray")
    if ray_address is not None and not str(ray_address).strip():
        raise ConfigError("--ray-address must not be empty (e.g. 'auto' or 'ray://host:10001')")
    if executor == "ray" and not ray_available():
        raise ConfigError(RAY_MISSING)


def make_executor(name: str = "local", ray_address: str | None = None, **options: Any):
    """The executor called ``name`` (``options`` go to :class:`RayExecutor`)."""
    check_executor(name, ray_address)
    if name == "ray":
        return RayExecutor(address=ray_address, **options)
    return LocalExecutor()


def executor_for(settings: Any):
    """The executor an :class:`~binser.experiment.ExperimentSettings` asks for."""
    return make_executor(getattr(settings, "executor", "local") or "local",
                         getattr(settings, "ray_address", None))


class LocalExecutor:
    """Everything on this machine: the extractors compute what is missing themselves."""

    name = "local"

    def prepare_features(self, extractor: Any, paths: Sequence[str | Path],
                         progress: bool = True) -> None:
        """Nothing to do: ``extractor.extract`` computes the missing features here."""

    def map_folds(self, fn: Callable[..., Any], calls: Sequence[tuple], n_jobs: int
                  ) -> Iterator[Any]:
        """``fn(*call)`` for each call in joblib worker processes, results in order."""
        from joblib import delayed

        from .workers import fold_parallel

        # every worker watches this process from its start (the pool's initializer)
        return fold_parallel(n_jobs, return_as="generator")(delayed(fn)(*call)
                                                            for call in calls)


# --------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------

def _worker_recipe(extractor: Any) -> tuple[str, dict[str, Any]]:
    """The plain extractor class and arguments a worker needs to compute what ``extractor``
    would compute (every layer of a frame extractor; no cache, no progress bar)."""
    from .features import FrameFeatureExtractor

    if isinstance(extractor, FrameFeatureExtractor):
        return "frame", dict(config=extractor.config, views=extractor.views,
                             layers=extractor.layers, batch_files=extractor.batch_files)
    return "segment", dict(config=extractor.config, views=extractor.views,
                           batch_size=extractor.batch_size,
                           channels_last=getattr(extractor, "channels_last", True))


class _FeatureWorker:
    """Ray actor: one loaded backbone, features of batches of files."""

    def __init__(self, backbone: Any, kind: str, kwargs: dict[str, Any], use_gpu: bool):
        import torch

        from .features import FrameFeatureExtractor, SegmentFeatureExtractor

        backbone.refresh_weights_id()   # frozen encoders keep their loaded identity
        self.weights_id = backbone.weights_id
        if use_gpu and torch.cuda.is_available():
            backbone.to("cuda")
        cls = FrameFeatureExtractor if kind == "frame" else SegmentFeatureExtractor
        self.kind = kind
        self.extractor = cls(backbone, cache_dir=None, num_threads=1, progress=False, **kwargs)

    def info(self) -> tuple[int, str]:
        return os.getpid(), self.weights_id

    def run(self, paths: list[str]) -> list[dict | None]:
        """Per file ``{key of extractor.keys(): (n, d) array}``; None for a file that fails
        alone (the driver's own extractor then meets, and reports, the same error)."""
        try:
            return self._split(self._extract(paths), len(paths))
        except Exception:   # noqa: BLE001  one bad file: find it, keep the others
            out: list[dict | None] = []
            for path in paths:
                try:
                    out.extend(self._split(self._extract([path]), 1))
                except Exception:   # noqa: BLE001
                    out.append(None)
            return out

    def _extract(self, paths: list[str]):
        return self.extractor.extract(paths)

    def _split(self, result: dict, n: int) -> list[dict]:
        if self.kind == "frame":   # {layer: {view: [..]}} -> {(view, layer): array}
            return [{(view, layer): rows[i] for layer, by_view in result.items()
                     for view, rows in by_view.items()} for i in range(n)]
        return [{view: rows[i] for view, rows in result.items()} for i in range(n)]


class _Tagged:
    """A FeatureCache under keys tagged with the device that computed the entries (GPU
    features differ from CPU ones by float32 rounding: the two never share an entry)."""

    def __init__(self, disk: Any, tag: str):
        self.disk, self.tag = disk, tag

    def key(self, key: str) -> str:
        import hashlib

        return hashlib.sha256(f"{key}|{self.tag}".encode()).hexdigest()[:40]

    def get(self, key: str, feature_dim: int | None = None) -> np.ndarray | None:
        return self.disk.get(self.key(key), feature_dim)

    def put(self, key: str, features: np.ndarray) -> Any:
        return self.disk.put(self.key(key), features)

    def path(self, key: str) -> Path:
        return self.disk.path(self.key(key))


class _Overlay:
    """A FeatureCache-like view: entries computed on the cluster (held in memory when there
    is no cache folder) in front of the disk cache."""

    def __init__(self, memory: dict[str, np.ndarray], disk: Any):
        self.memory, self.disk = memory, disk

    def get(self, key: str, feature_dim: int | None = None) -> np.ndarray | None:
        if key in self.memory:
            return self.memory[key]
        return self.disk.get(key, feature_dim) if self.disk is not None else None

    def put(self, key: str, features: np.ndarray) -> Any:
        if self.disk is not None:
            return self.disk.put(key, features)
        self.memory[key] = np.ascontiguousarray(features, dtype=np.float32)
        return None

    def has(self, key: str) -> bool:
        return key in self.memory or (self.disk is not None and self.disk.path(key).is_file())


class RayExecutor:
    """Features on Ray actors, folds as Ray tasks (see the module docstring).

    ``address``: ``ray.init`` address (None: the cluster this process is already connected
    to, else ``RAY_ADDRESS``, else a new local one). ``workers``: feature actors (default:
    one per GPU of the cluster, else one per CPU). ``files_per_task``: files per actor call.
    """

    name = "ray"
    fault_hook: Callable[["RayExecutor", int, int], None] | None = None  # tests: (self, actor, n)

    def __init__(self, address: str | None = None, workers: int | None = None,
                 files_per_task: int = FILES_PER_TASK, max_attempts: int = MAX_ATTEMPTS):
        try:
            import ray
        except ImportError:
            raise ConfigError(RAY_MISSING) from None
        self.ray = ray
        if not ray.is_initialized():
            local = address is None and not os.environ.get("RAY_ADDRESS")
            from .parallel import default_workers

            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False,   # a new local cluster: the cores we may use
                     **({"num_cpus": default_workers()} if local else {}))
        check_int_range(workers, "Ray workers", 1, optional=True, integral_floats=True)
        self.workers = workers
        self.files_per_task = int(files_per_task)
        self.max_attempts = int(max_attempts)
        self.retried = 0          # batches submitted again after an actor died
        self.pids: list[int] = []  # feature actors' processes at start (tests, diagnostics)

    # ---------------------------------------------------------------- features

    def _pool_shape(self) -> tuple[int, dict[str, float]]:
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus:
            return self.workers or gpus, {"num_cpus": 1, "num_gpus": 1}
        return self.workers or max(1, int(resources.get("CPU", 1))), {"num_cpus": 1}

    def prepare_features(self, extractor: Any, paths: Sequence[str | Path],
                         progress: bool = True) -> None:
        """Compute on the cluster every feature of ``paths`` missing from the extractor's
        cache; afterwards ``extractor.extract(paths)`` finds them all (cache or memory)."""
        from .progress import bar as progress_bar

        n_actors, resources = self._pool_shape()
        if isinstance(extractor.cache, _Overlay):
            overlay = extractor.cache
        else:   # GPU features equal CPU ones only to float32 rounding: their own cache keys
            disk = extractor.cache
            if disk is not None and "num_gpus" in resources:
                disk = _Tagged(disk, "cuda")
            overlay = extractor.cache = _Overlay({}, disk)
        extractor.backbone.refresh_weights_id()   # keys of the actual weights
        todo: list[tuple[str, dict]] = []
        seen: set[str] = set()
        for path in paths:
            keys = extractor.keys(path)
            if all(overlay.has(k) for k in keys.values()) or str(path) in seen:
                continue
            seen.add(str(path))
            todo.append((str(path), keys))
        if not todo:
            return
        batches = [todo[i:i + self.files_per_task]
                   for i in range(0, len(todo), self.files_per_task)]
        actors = self._start_actors(extractor, min(n_actors, len(batches)), resources)
        bar = progress_bar(total=len(todo), unit="file",
                           desc=f"features (ray, {len(actors)} workers)", enabled=progress)
        try:
            self._run_batches(actors, batches, overlay, bar)
        finally:
            bar.close()
            for actor in actors:
                self.ray.kill(actor, no_restart=True)

    def _start_actors(self, extractor: Any, n: int, resources: dict[str, float]) -> list:
        """``n`` started actors holding the backbone; ``self._new_actor()`` makes another."""
        ray = self.ray
        kind, kwargs = _worker_recipe(extractor)
        backbone_ref = ray.put(extractor.backbone)   # shipped once, shared by every actor
        cls = ray.remote(max_restarts=0, max_task_retries=0)(_FeatureWorker)
        use_gpu = "num_gpus" in resources
        self._new_actor = lambda: cls.options(**resources).remote(backbone_ref, kind, kwargs,
                                                                  use_gpu)
        actors = [self._new_actor() for _ in range(n)]
        infos = ray.get([a.info.remote() for a in actors])
        self.pids = [pid for pid, _ in infos]
        wanted = extractor.backbone.weights_id
        if any(w != wanted for _, w in infos):
            raise BinserError(f"Ray workers hold other weights than this process "
                              f"({wanted}); refusing to mix features")
        return actors

    def _run_batches(self, actors: list, batches: list[list[tuple[str, dict]]],
                     overlay: _Overlay, bar) -> None:
        """Keep every live actor busy with one batch; a batch whose actor died goes back to
        the queue and a new actor takes the dead one's slot once it answers."""
        ray = self.ray
        lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.ObjectLostError)
        queue = list(range(len(batches)))
        attempts = [0] * len(batches)
        replaced = [0] * len(actors)
        free = list(range(len(actors)))
        running: dict[Any, tuple[int, int]] = {}   # run ref -> (batch, actor slot)
        probes: dict[Any, int] = {}                 # info ref of a new actor -> its slot

        def replace(slot: int) -> None:
            """A new actor in ``slot`` (the old one is dead), usable once it answers."""
            ray.kill(actors[slot], no_restart=True)
            if replaced[slot] < ACTOR_RESTARTS:
                replaced[slot] += 1
                actors[slot] = self._new_actor()
                probes[actors[slot].info.remote()] = slot

        submitted = 0
        while queue or running:
            while queue and free:
                b, a = queue.pop(0), free.pop(0)
                attempts[b] += 1
                ref = actors[a].run.remote([p for p, _ in batches[b]])
                running[ref] = (b, a)
                submitted += 1
                if type(self).fault_hook is not None:
                    type(self).fault_hook(self, a, submitted)
            if not running and not probes:
                raise BinserError("Ray: every feature worker died and could not be replaced")
            done, _ = ray.wait(list(running) + list(probes), num_returns=1)
            ref = done[0]
            if ref in probes:
                a = probes.pop(ref)
                try:
                    self.pids[a] = ray.get(ref)[0]
                    free.append(a)
                except lost:
                    replace(a)
                continue
            b, a = running.pop(ref)
            try:
                files = ray.get(ref)
            except lost as error:
                if attempts[b] >= self.max_attempts:
                    raise BinserError(f"Ray: a feature batch failed {attempts[b]} times "
                                      f"({type(error).__name__}); giving up") from None
                self.retried += 1
                queue.insert(0, b)       # again, on the next live actor
                replace(a)
                continue
            free.append(a)
            for (path, keys), arrays in zip(batches[b], files):
                if arrays is not None:   # None: the driver meets (and reports) the error
                    for what, array in arrays.items():
                        overlay.put(keys[what], array)
            bar.update(len(batches[b]))

    # ---------------------------------------------------------------- folds

    def map_folds(self, fn: Callable[..., Any], calls: Sequence[tuple], n_jobs: int
                  ) -> Iterable[Any]:
        """``fn(*call)`` for each call as Ray tasks (Ray retries a task whose worker died);
        arguments shared between calls go through the object store once. In order."""
        ray = self.ray
        task = ray.remote(max_retries=MAX_ATTEMPTS, num_cpus=1)(_fold_task)
        refs: dict[int, Any] = {}
        held: list[Any] = []   # keeps every argument alive, so no id() is reused meanwhile

        def ref(value: Any) -> Any:
            if isinstance(value, (int, float, str, bool, type(None))):
                return value
            if id(value) not in refs:
                held.append(value)
                refs[id(value)] = ray.put(value)
            return refs[id(value)]

        pending = [task.remote(fn, *[ref(v) for v in call]) for call in calls]
        for item in pending:
            yield ray.get(item)


def _fold_task(fn: Callable[..., Any], *args: Any) -> Any:
    """One fold on a Ray worker; a cache folder this node cannot write is not used."""
    from dataclasses import replace

    args = list(args)
    for i, value in enumerate(args):
        cache_dir = getattr(value, "cache_dir", None)
        if cache_dir is not None and hasattr(value, "__dataclass_fields__"):
            try:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                usable = os.access(cache_dir, os.W_OK)
            except OSError:
                usable = False
            if not usable:
                args[i] = replace(value, cache_dir=None)
    return fn(*args)
