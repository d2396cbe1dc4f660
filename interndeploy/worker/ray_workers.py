"""Tensor-parallel workers as Ray actors, on the GPUs of an existing Ray cluster (`--distributed-executor-backend ray`).

    node 0:  ray start --head --node-ip-address <node0 cluster ip> --port 6379
    node k:  ray start --address <node0 cluster ip>:6379 --node-ip-address <node k cluster ip>
    node 0:  interndeploy serve api_server MODEL --tp 16 --distributed-executor-backend ray

One placement group reserves a GPU (on CPU: a core) per rank, packed onto as few nodes as possible. Rank 0
is the engine process itself: it takes the GPU of a bundle on its own node, held by a small placeholder
actor so that Ray gives it to nobody else. Ranks 1.. are `_Worker` actors; each runs `executor.run_worker`,
which joins the torch.distributed world at the engine node's cluster address and then waits for steps.
The model directory must exist at the same path on every node.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .. import distributed
from ..config import ConfigError, EngineConfig
from ..model_dir import ModelInfo

_READY_TIMEOUT_S = float(os.environ.get("INTERNDEPLOY_RAY_READY_TIMEOUT_S", "600"))


def _actor_classes() -> tuple[Any, Any]:
    import ray

    @ray.remote
    class _Worker:
        def run(self, *args: Any) -> None:
            from .executor import run_worker

            run_worker(*args)

    @ray.remote
    class _GpuHolder:
        def gpu_id(self) -> int:
            return int(ray.get_gpu_ids()[0])

    return _Worker, _GpuHolder


def _local_cuda_index(physical: int) -> int:
    """The index this process uses for physical GPU `physical` (CUDA_VISIBLE_DEVICES may renumber them)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return physical
    ids = [v.strip() for v in visible.split(",")]
    if str(physical) not in ids:
        raise ConfigError(f"Ray gave this engine GPU {physical}, which CUDA_VISIBLE_DEVICES={visible} hides")
    return ids.index(str(physical))


def start(
    world_size: int, info: ModelInfo, cfg: EngineConfig, session_len: int, max_batch_size: int, use_gpu: bool
) -> tuple[bool, Any, list[Any], list[Any], int, str, torch.device]:
    """Reserve the ranks' resources and start workers 1..N-1 -> (ray_owned, placement group, actors,
    run refs, master port, master address, rank 0's device)."""
    try:
        import ray
        from ray.util.placement_group import placement_group, placement_group_table
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    except ImportError:
        raise ConfigError("--distributed-executor-backend ray needs Ray: pip install 'interndeploy[ray]'") from None
    owned = not ray.is_initialized()
    if owned:  # join the running cluster (`ray start` on every node); RAY_ADDRESS may name it
        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=True)
    bundle = {"GPU": 1, "CPU": 1} if use_gpu else {"CPU": 1}
    pg = placement_group([dict(bundle) for _ in range(world_size)], strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=_READY_TIMEOUT_S)
    if not ready:
        raise ConfigError(f"the Ray cluster cannot place {world_size} x {bundle} within {_READY_TIMEOUT_S:.0f} s; "
                          f"it has {ray.cluster_resources()}: start `ray start` on more nodes or lower --tp")
    node_of = {int(k): v for k, v in placement_group_table(pg)["bundles_to_node_id"].items()}
    here = ray.get_runtime_context().get_node_id()
    local = sorted(i for i, node in node_of.items() if node == here)
    if not local:
        raise ConfigError("Ray placed no rank on this node, where the engine runs; run the server on a node "
                          "with a free GPU of the cluster")
    worker_cls, holder_cls = _actor_classes()
    actors: list[Any] = []
    device = torch.device("cpu")
    if use_gpu:
        holder = holder_cls.options(num_cpus=0, num_gpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=local[0])).remote()
        actors.append(holder)
        device = torch.device("cuda", _local_cuda_index(ray.get(holder.gpu_id.remote())))
    addr = ray.util.get_node_ip_address()
    port = distributed.free_port(addr)
    refs = []
    others = [i for i in sorted(node_of) if i != local[0]]
    for rank, index in enumerate(others, start=1):
        worker = worker_cls.options(num_cpus=1, num_gpus=1 if use_gpu else 0,
                                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                                        placement_group=pg, placement_group_bundle_index=index)).remote()
        actors.append(worker)
        rank_device = "cuda:0" if use_gpu else "cpu"  # Ray sets each actor's CUDA_VISIBLE_DEVICES
        refs.append(worker.run.remote(rank, world_size, addr, port, rank_device, info, cfg, session_len,
                                      max_batch_size))
    return owned, pg, actors, refs, port, addr, device


def stop(owned: bool, pg: Any, actors: list[Any], refs: list[Any]) -> None:
    import ray
    from ray.util.placement_group import remove_placement_group

    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=30)
    for actor in actors:
        ray.kill(actor)
    if pg is not None:
        remove_placement_group(pg)
    if owned:
        ray.shutdown()
