"""A curation stage's shards as Prefect task runs on Ray, through prefect-ray: one task run per shard in the UI.

With `execution.engine=ray`, the stage task of a Prefect flow enters prefect-ray's
`RayTaskRunner` and hands the stage an executor that submits each shard through it: the
work is the same Ray task (named like the plain Ray executor's, e.g. `filter.checks`), and
the Prefect UI lists every shard with its state and duration. The runner joins
`execution.address` when given; without one it starts a Ray instance for the stage and stops
it afterwards (a Ray cluster that Prefect starts).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

R = TypeVar("R")


# No cache, no stored result: a shard's output is its files, and its inputs are data frames.
@task(name="shard", cache_policy=NO_CACHE, persist_result=False)
def run_shard(fn: Callable[..., R], item: Any, shared: dict[str, Any]) -> R:
    """One shard's work (the stage's function); `shared` arrives resolved from Ray's object store."""
    return fn(item, **shared)


class PrefectRayExecutor:
    """`machinery.execution.Executor` over an entered `prefect_ray.RayTaskRunner`."""

    name = "ray"
    in_process = False
    task_cpus = 1

    def __init__(self, runner: Any, *, in_flight_per_cpu: int = 2):
        self.runner = runner
        self.in_flight_per_cpu = in_flight_per_cpu

    def map(self, fn: Callable[..., R], items: Sequence[Any], *, name: str, shared: dict[str, Any] | None = None
            ) -> Iterator[tuple[int, R]]:
        """Submit a Prefect task run per item, a bounded number at a time; yield each result as it lands."""
        import ray
        from prefect_ray.context import remote_options

        refs = {key: ray.put(value) for key, value in (shared or {}).items()}  # once; prefect-ray resolves refs
        window = max(2, int(ray.cluster_resources().get("CPU", 1)) * self.in_flight_per_cpu)
        waiting = list(range(len(items)))[::-1]
        running: dict[Any, tuple[int, Any]] = {}
        try:
            while waiting or running:
                while waiting and len(running) < window:
                    index = waiting.pop()
                    shard = run_shard.with_options(name=name, task_run_name=f"{name} #{index}")
                    with remote_options(num_cpus=self.task_cpus, scheduling_strategy="SPREAD"):
                        future = self.runner.submit(shard, parameters={"fn": fn, "item": items[index],
                                                                       "shared": refs})
                    running[future.wrapped_future] = (index, future)
                done, _ = ray.wait(list(running), num_returns=1)
                index, future = running.pop(done[0])
                try:
                    result = future.result()
                except Exception as error:
                    error.add_note(f"in {name}, item {index} (a Prefect task run on Ray)")
                    raise
                yield index, result
        finally:
            for ref in running:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)


@contextlib.contextmanager
def executor(address: str | None) -> Iterator[PrefectRayExecutor]:
    """A prefect-ray runner for one stage: joins `address`, or starts (and then stops) a Ray instance."""
    from prefect_ray import RayTaskRunner

    # "local", as RayExecutor: never a cluster that happens to run on this machine.
    if address:
        with RayTaskRunner(address=address) as runner:
            yield PrefectRayExecutor(runner)
        return
    import ray

    from machinery import execution

    # Our own instance, as RayExecutor's: on 127.0.0.1 only, no dashboard (inside a Ray task: that Ray).
    starts = not ray.is_initialized()
    runner = RayTaskRunner(address="local", init_kwargs=execution.local_init_kwargs())
    with execution.loopback_only(ray), runner:
        if starts:
            execution.check_loopback(ray)
        yield PrefectRayExecutor(runner)
