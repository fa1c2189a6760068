"""Resume: a stage's finished units survive a killed run."""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path


class Resume:
    """Finished units of a stage (one class's adapter, one class's images) that survive a
    killed run: `.<out_dir name>.resume/<key>/<unit>/` beside the output folder.

    `key` hashes everything the units depend on (params, inputs), so a rerun with other
    inputs never picks up stale work; other keys' leftovers are removed. Each unit is
    written to a temp folder and renamed when complete. `finish` removes the lot once
    the stage's output folder is in place.
    """

    def __init__(self, out_dir: Path, key: str):
        self.base = Path(out_dir).parent / f".{Path(out_dir).name}.resume"
        self.root = self.base / key
        if self.base.exists():
            for other in self.base.iterdir():
                if other.name != key:
                    shutil.rmtree(other, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)

    def done(self, unit: str) -> Path | None:
        """The finished unit's folder, or None if it has not been completed."""
        path = self.root / unit
        return path if path.is_dir() else None

    @contextlib.contextmanager
    def unit(self, unit: str) -> Iterator[Path]:
        """A temp folder for `unit`, renamed to its final place when the block completes."""
        tmp = self.root / f".{unit}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.replace(tmp, self.root / unit)

    def ensure(
        self, unit: str, make: Callable[..., object], *args, **kwargs
    ) -> tuple[Path, float | None]:
        """The per-unit resume loop of every stage: the finished unit's folder, built first
        by `make(folder, *args, **kwargs)` when it is not there. Returns the folder and the
        seconds `make` took (None when the unit was already finished)."""
        done = self.done(unit)
        if done is not None:
            return done, None
        started = time.perf_counter()
        with self.unit(unit) as tmp:
            make(tmp, *args, **kwargs)
        return self.root / unit, time.perf_counter() - started

    def ensure_many(
        self,
        jobs: Sequence[tuple[str, Callable[..., object], tuple]],
        *,
        workers: int = 1,
        tick: Callable[[str, float | None], None] | None = None,
    ) -> list[tuple[Path, float | None]]:
        """`ensure` for many units, [(unit, make, args)]; results in the jobs' order.
        `tick(unit, seconds)` is called as each unit is found done (seconds None) or
        finishes (progress.Units prints progress from it).

        With `workers` > 1 the unfinished units run that many at a time, each in a fresh
        process with one CPU thread (OMP_NUM_THREADS=1, set before torch loads there): on
        a few cores, one-thread trainings side by side do more steps per second than one
        multi-thread training (benchmarks/results/cpu_pipeline.md). `make` and its
        arguments must pickle. A unit that fails raises after the others finish, so a
        rerun redoes only what did not complete.
        """
        tick = tick or (lambda unit, seconds: None)
        todo = [job for job in jobs if self.done(job[0]) is None]
        if workers <= 1 or len(todo) <= 1:
            out = []
            for unit, make, args in jobs:
                out.append(self.ensure(unit, make, *args))
                tick(unit, out[-1][1])
            return out
        for unit, _, _ in jobs:
            if self.done(unit) is not None:
                tick(unit, None)
        seconds: dict[str, float | None] = {}
        with ProcessPoolExecutor(
            min(workers, len(todo)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_one_thread,
        ) as pool:
            futures = {
                pool.submit(self.ensure, unit, make, *args): unit for unit, make, args in todo
            }
            failed: BaseException | None = None
            for future in as_completed(futures):
                unit = futures[future]
                try:
                    seconds[unit] = future.result()[1]
                except BaseException as exc:  # the others finish first (see above)
                    failed = failed or exc
                    continue
                tick(unit, seconds[unit])
            if failed is not None:
                raise failed
        return [(self.root / unit, seconds.get(unit)) for unit, _, _ in jobs]

    def finish(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def _one_thread() -> None:
    """A Resume worker's start: one intra-op thread for torch (it reads these when it
    loads, with the first unit's unpickling, after this runs)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def file_digest(*paths: Path) -> str:
    """sha256 over the bytes of the given files (stage inputs' identity for Resume keys)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()
