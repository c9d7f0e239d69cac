"""Where the per-row work of the curation stages runs: in this process, or as Ray tasks on a cluster.

A stage cuts its rows into shards and hands one function over them to an `Executor`. The
local executor calls it here, shard after shard; the Ray executor runs each call as a Ray task
(`ray.remote`) wherever the cluster has a free CPU. Results come back by shard index, so a
stage's outputs do not depend on the engine, and the engine is not part of a stage's key.
`ray` is imported only by the Ray executor: the local engine runs without it installed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from machinery.config import ExecutionConfig

logger = logging.getLogger(__name__)

R = TypeVar("R")


class ExecutionError(RuntimeError):
    """Work cannot run as asked (no Ray, shards in memory for a cluster), or failed without a readable cause."""


class Executor(Protocol):
    """Runs one function over many items and hands back each result with its item's index."""

    name: str  # "local" or "ray": for logs and the stage's execution record
    in_process: bool  # items run in this process, one at a time: they may share open files
    task_cpus: int  # CPUs one item may keep busy (e.g. the answer checker's process pool)

    def map(self, fn: Callable[..., R], items: Sequence[Any], *, name: str, shared: dict[str, Any] | None = None
            ) -> Iterator[tuple[int, R]]:
        """`fn(item, **shared)` for every item; yields (index, result) as each finishes, in any order.

        `shared` holds values every call reads (sent to a cluster once, not once per item);
        `name` labels the work in logs and in Ray's task list. An item's exception is raised as
        itself (a SourceError stays a SourceError), with a note naming the work and the item.
        """


class LocalExecutor:
    """Every item in this process, in order; an item may use `task_cpus` processes of its own."""

    name = "local"
    in_process = True

    def __init__(self, task_cpus: int = 2):  # 2: the answer checker's pool size since the first version
        self.task_cpus = task_cpus

    def map(self, fn: Callable[..., R], items: Sequence[Any], *, name: str, shared: dict[str, Any] | None = None
            ) -> Iterator[tuple[int, R]]:
        """Call fn on each item here, in order."""
        for index, item in enumerate(items):
            try:
                result = fn(item, **(shared or {}))
            except Exception as error:
                error.add_note(f"in {name}, item {index} (local engine)")
                raise
            yield index, result


LOOPBACK = "127.0.0.1"


def local_init_kwargs() -> dict[str, Any]:
    """`ray.init` arguments for a Ray instance of this machine alone: no dashboard, every server on 127.0.0.1."""
    return {"include_dashboard": False, "_node_ip_address": LOOPBACK}


@contextlib.contextmanager
def loopback_only(ray: Any) -> Iterator[None]:
    """Around `ray.init` of a local instance: let Ray keep a node IP of 127.0.0.1.

    Ray 2.60 replaces a node IP of 127.0.0.1 with the machine's routable address
    (`services.resolve_ip_for_localhost`), and its servers then listen on every interface,
    unless multi-node clusters are off (`ray_constants.ENABLE_RAY_CLUSTER`, what
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 sets on import). Turned off for the start only: the
    instance's own processes get the address as an argument, and joining a cluster later is unchanged.
    """
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if constants is None or not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        yield  # another Ray: `check_loopback` says whether it stayed local
        return
    saved = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved


def check_loopback(ray: Any) -> None:
    """ExecutionError (after stopping it) when the Ray instance just started listens beyond this machine."""
    address = ray.util.get_node_ip_address()
    if address != LOOPBACK:
        ray.shutdown()
        raise ExecutionError(f"the local Ray instance came up on {address}, not {LOOPBACK}, so other machines "
                             f"could reach it; start Ray yourself (`ray start --head --node-ip-address "
                             f"{LOOPBACK}`) and set execution.address=auto")


class RayExecutor:
    """Every item as a Ray task; connects to (or starts) Ray on first use.

    `address`: None starts a Ray instance on this machine (`ray.init(address="local")`: never
    a cluster that happens to run here), listening on 127.0.0.1 only (`local_init_kwargs`);
    "auto", "host:port" or "ray://host:port" joins that cluster. Inside a Ray task (a flow run
    by prefect-ray), the running Ray is used as it is.
    """

    name = "ray"
    in_process = False

    def __init__(self, address: str | None = None, *, task_cpus: int = 1, in_flight_per_cpu: int = 2):
        self.address = address
        self.task_cpus = task_cpus  # what each task reserves: Ray runs as many at once as the cluster has CPUs
        self.in_flight_per_cpu = in_flight_per_cpu

    def connect(self) -> Any:
        """The `ray` module, initialised against the configured cluster."""
        try:
            import ray
        except ImportError as error:
            raise ExecutionError("execution.engine=ray needs Ray: pip install 'distillery[ray]'") from error
        if not ray.is_initialized():
            address = self.address or "local"
            logger.info("connecting to Ray at %s", address)
            options: dict[str, Any] = {} if address.startswith("ray://") else {"logging_level": logging.WARNING}
            if address != "local":
                ray.init(address=address, **options)
                return ray
            with loopback_only(ray):  # our own instance: no dashboard, nothing reachable from other machines
                ray.init(address=address, **options, **local_init_kwargs())
            check_loopback(ray)
        return ray

    def cpus(self) -> int:
        """CPUs of the whole cluster."""
        return max(1, int(self.connect().cluster_resources().get("CPU", 1)))

    def map(self, fn: Callable[..., R], items: Sequence[Any], *, name: str, shared: dict[str, Any] | None = None
            ) -> Iterator[tuple[int, R]]:
        """Submit items as Ray tasks, a bounded number at a time; yield each result as it lands."""
        ray = self.connect()
        # SPREAD: shards are CPU work with no data on any node (inputs travel with the task), so
        # balance them over nodes rather than fill the driver's node first.
        remote = ray.remote(_call).options(name=name, num_cpus=self.task_cpus, scheduling_strategy="SPREAD")
        refs = {key: ray.put(value) for key, value in {"fn": fn, **(shared or {})}.items()}  # once, not per task
        # Bounded: the object store holds only the inputs of tasks in flight, not of every shard at once.
        window = max(2, self.cpus() // self.task_cpus * self.in_flight_per_cpu)
        waiting = list(range(len(items)))[::-1]
        running: dict[Any, int] = {}
        try:
            while waiting or running:
                while waiting and len(running) < window:
                    index = waiting.pop()
                    running[remote.remote(items[index], **refs)] = index
                done, _ = ray.wait(list(running), num_returns=1)
                index = running.pop(done[0])
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayTaskError as error:
                    cause = getattr(error, "cause", None)
                    if not isinstance(cause, Exception):
                        raise ExecutionError(f"{name}: item {index} failed on a Ray worker: {error}") from error
                    cause.add_note(f"in {name}, item {index} (a Ray task)")
                    raise cause from error
                yield index, result
        finally:
            for ref in running:  # the driver stops (an error, Ctrl-C): so do its tasks
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)


def _call(item: Any, *, fn: Callable[..., R], **shared: Any) -> R:
    """A Ray task's body: Ray takes only plain functions, and `fn` may be a partial."""
    return fn(item, **shared)


def make_executor(config: ExecutionConfig) -> Executor:
    """The executor an `execution` config asks for."""
    if config.engine == "ray":
        return RayExecutor(config.address)
    return LocalExecutor()
