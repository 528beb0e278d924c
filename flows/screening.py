"""Surrogate screening spread over workers: conditions in chunks, one Prefect task per chunk, on any task runner.

On one machine the default :class:`~prefect.task_runners.ThreadPoolTaskRunner` runs the chunks; on many, a
:class:`prefect_dask.DaskTaskRunner` sends them to a Dask cluster (each worker loads the surrogate once)::

    from flows.screening import screen
    rows = screen(conditions, runner="dask", workers=8)               # a local Dask cluster, 8 processes
    rows = screen(conditions, runner="tcp://scheduler:8786")          # an existing cluster

The surrogate draws the same noise for image ``k`` of every condition, so chunking changes nothing: the rows equal
one ``SurrogatePredictor.predict`` call on all conditions. ``deploy/prefect.yaml`` deploys this flow (and the
campaign) to a work pool; see the README, "Beyond one machine".
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE as NO_CACHE

RUNNERS = ("threads", "dask")


@lru_cache(maxsize=4)
def _predictor(model_dir: str | None, steps: int | None):
    from models.surrogate.model import DEFAULT_MODEL_DIR
    from models.surrogate.predictor import SurrogatePredictor

    return SurrogatePredictor.from_pretrained(model_dir or DEFAULT_MODEL_DIR, steps=steps)


@task(name="screen-chunk", cache_policy=NO_CACHE, retries=1)
def screen_chunk(conditions: list[dict[str, Any]], model_dir: str | None, n_images: int, seed: int,
                 steps: int | None) -> list[dict[str, Any]]:
    """Predicted descriptors (and their spread over the images) of one chunk of conditions."""
    predictions = _predictor(model_dir, steps).predict(conditions, n_images=n_images, seed=seed)
    return [{"conditions": p.conditions, "descriptors": p.descriptors, "spread": p.spread} for p in predictions]


@flow(name="surrogate-screening")
def screen_conditions(conditions: list[dict[str, Any]], model_dir: str | None = None, n_images: int = 2,
                      seed: int = 0, steps: int | None = None, chunk_size: int = 16) -> list[dict[str, Any]]:
    """Screen ``conditions`` with the surrogate, ``chunk_size`` per task; rows in the order given."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    chunks = [conditions[i:i + chunk_size] for i in range(0, len(conditions), chunk_size)]
    futures = [screen_chunk.submit(chunk, model_dir, n_images, seed, steps) for chunk in chunks]
    return [row for future in futures for row in future.result()]


def task_runner(spec: str = "threads", workers: int | None = None):
    """A task runner from a short spec: ``"threads"``, ``"dask"`` (a local cluster of ``workers`` processes) or a
    Dask scheduler address (``"tcp://host:8786"``)."""
    if spec == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if spec == "dask" or spec.startswith(("tcp://", "tls://", "inproc://")):
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise RuntimeError("the Dask task runner needs prefect-dask: pip install 'morphloop[dask]'") from exc
        if spec == "dask":
            return DaskTaskRunner(cluster_kwargs={"n_workers": workers or 2, "threads_per_worker": 1})
        return DaskTaskRunner(address=spec)
    raise ValueError(f"unknown task runner {spec!r}; use 'threads', 'dask' or a scheduler address such as "
                     "'tcp://host:8786'")


def screen(conditions: list[dict[str, Any]], *, runner: str = "threads", workers: int | None = None,
           **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`screen_conditions` on the task runner ``runner`` (see :func:`task_runner`)."""
    return screen_conditions.with_options(task_runner=task_runner(runner, workers))(conditions, **kwargs)
