"""Where independent pieces of work run: here, one after another, or as Ray tasks across a cluster.

The work itself always writes its own result files atomically (a sweep cell's row, a sample's parts),
so an executor only decides placement; resume and merging stay with the job, and a Ray run writes
exactly the files a local run would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from probe.errors import ProbeError

EXECUTORS = ("local", "ray")


def run_tasks(
    function: Callable,
    arguments: Sequence[tuple],
    executor: str = "local",
    address: str | None = None,
    gpus: float = 0.0,
    cpus: int = 1,
    progress: bool = True,
    desc: str = "tasks",
) -> None:
    """Call `function(*args)` for every args in `arguments`: in this process, or as one Ray task each
    asking for `gpus` GPUs and `cpus` CPUs (on CUDA, one GPU per task spreads them over every GPU)."""
    if executor == "local":
        for args in tqdm(arguments, desc=desc, disable=not progress or len(arguments) < 2):
            function(*args)
        return
    if executor != "ray":
        raise ProbeError(f"--executor must be one of {', '.join(EXECUTORS)}, got '{executor}'")
    if not arguments:
        return
    ray = connected_ray(address)
    remote = ray.remote(num_gpus=gpus, num_cpus=cpus, max_retries=0)(function)
    pending = [remote.remote(*args) for args in arguments]
    with tqdm(total=len(pending), desc=desc, disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, ProbeError):
                    raise exc.cause from None
                raise
            bar.update(1)


def connected_ray(address: str | None = None):
    """The `ray` module, connected to `address` (or a local instance) unless this process already is."""
    try:
        import ray
    except ImportError:
        raise ProbeError("--executor ray needs Ray: pip install -c constraints.txt -e '.[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False)
    return ray


def ray_worker_count(gpus: float, address: str | None = None) -> int:
    """How many tasks the cluster runs at once: its GPUs on CUDA, else its CPUs."""
    resources = connected_ray(address).cluster_resources()
    return max(1, int(resources.get("GPU", 0) if gpus else resources.get("CPU", 1)))
