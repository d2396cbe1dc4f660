"""Process groups of one deployment and the collectives the layers call, over `torch.distributed`.

    --tp N (one engine)            world = N ranks: rank 0 is the engine process, ranks 1.. are workers
        tp group = world           every rank holds 1/N of the heads, MLP columns and vocabulary
        ep group = world (--ep N)  every rank holds E/N experts; all ranks see the same tokens, so a MoE
                                   layer runs the local experts and all-reduces (no dispatch needed)
    --dp N --ep N (--tp 1)         world = N engines (one per GPU, each with its own scheduler)
        ep group = world           experts sharded as above, but each rank has its own tokens: MoE layers
                                   dispatch and combine them with all_to_all_single; the engines step in
                                   lock-step (an idle one runs a one-token dummy batch)

Backends: NCCL between GPUs (small tp all-reduces of a one-host engine through symmetric memory instead:
one_shot_all_reduce.py), gloo on CPU. Rank 0's step messages to the other ranks of one host go through a
shared-memory ring (shm_broadcast.py; GPU engines on x86-64, INTERNDEPLOY_TP_CONTROL=shm|gloo to choose),
else over the gloo group below. A second gloo group (`cpu_group`) carries the engine's
per-step control messages (int64 tensors, never pickles) with a long timeout, since a worker may wait
for the next step for as long as the server is idle.

Exposure: the rendezvous store is a TCPStore whose listening socket we bind ourselves to the address
given (MASTER_ADDR / INTERNDEPLOY_DP_MASTER_ADDR, 127.0.0.1 for one node), and GLOO_SOCKET_IFNAME /
NCCL_SOCKET_IFNAME are set to the interface holding that address (unless already set), so the
collectives' sockets use the cluster interface and nothing listens on 0.0.0.0. Nothing reachable from
the HTTP side ever feeds these sockets. One distributed engine per process at a time: the state below
is process-global, set by the executor before the model is built and cleared at shutdown.
"""

from __future__ import annotations

import array
import datetime
import fcntl
import hashlib
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import shm_broadcast
from .one_shot_all_reduce import OneShotAllReduce
from .shm_broadcast import ShmBroadcast

logger = logging.getLogger("interndeploy")

# a worker waits for the next step as long as the server idles; peers that die close their sockets
CONTROL_TIMEOUT = datetime.timedelta(days=3650)
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
_ENV_PREFIXES = ("INTERNDEPLOY_", "LMDEPLOY_")


@dataclass(slots=True)
class ParallelState:
    rank: int  # this process's rank in the world
    world_size: int
    tp_rank: int
    tp_size: int  # ranks sharing one engine's heads / columns / vocabulary
    ep_rank: int
    ep_size: int  # ranks sharing the experts (1: every rank holds all experts)
    ep_tokens_replicated: bool  # True: every ep rank holds the same tokens (EP inside TP)
    device: torch.device
    cpu_group: dist.ProcessGroup | None = None  # gloo group of the world, for control messages
    one_shot: OneShotAllReduce | None = None  # small tp all-reduces over symmetric memory (GPUs, tp == world)
    control: ShmBroadcast | None = None  # rank 0's step messages through shared memory (one host, tp == world)
    # the tp group and the ep group are the world whenever their size is > 1 (see the module docstring)


_STATE: ParallelState | None = None


def get_state() -> ParallelState | None:
    return _STATE


def tp_rank_and_size() -> tuple[int, int]:
    return (_STATE.tp_rank, _STATE.tp_size) if _STATE is not None else (0, 1)


def ep_rank_and_size() -> tuple[int, int]:
    return (_STATE.ep_rank, _STATE.ep_size) if _STATE is not None else (0, 1)


def ep_tokens_replicated() -> bool:
    return _STATE is None or _STATE.ep_tokens_replicated


# ---- collectives the layers call ------------------------------------------------------------------------


# torch 2.13 renamed all_gather_into_tensor (the device machine's 2.11 has only the old name)
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def tp_broadcast(x: torch.Tensor) -> torch.Tensor:
    """Tensor-parallel rank 0's `x` on every rank, in place, in stream order (rank 0's sampled tokens: the
    other ranks read a step's pending input ids from them, on the device)."""
    dist.broadcast(x, src=0)
    return x


def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum over the tensor-parallel ranks, in place (the partial sums of a row-parallel layer)."""
    one_shot = _STATE.one_shot if _STATE is not None else None
    if one_shot is not None and one_shot.takes(x):
        return one_shot(x)
    dist.all_reduce(x)
    return x


def tp_all_gather(x: torch.Tensor) -> torch.Tensor:
    """[N, C] on each rank -> [N, tp * C]: rank r's columns at [r * C, (r + 1) * C) (vocab-parallel logits)."""
    _, size = tp_rank_and_size()
    n, c = x.shape
    out = torch.empty((size * n, c), dtype=x.dtype, device=x.device)
    _all_gather_single(out, x.contiguous())
    return out.view(size, n, c).permute(1, 0, 2).reshape(n, size * c)


def ep_all_reduce(x: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(x)
    return x


def ep_all_to_all(x: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
    """Rows [sum(send_counts), ...] -> [sum(recv_counts), ...]: the first send_counts[0] rows go to rank 0, ..."""
    out = x.new_empty((sum(recv_counts), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), recv_counts, send_counts)
    return out


def ep_exchange_counts(send_counts: torch.Tensor) -> torch.Tensor:
    """send_counts [ep] (rows for each rank, on the host) -> recv_counts [ep] (rows from each rank), over gloo."""
    recv = torch.empty_like(send_counts)
    dist.all_to_all_single(recv, send_counts, group=_STATE.cpu_group if _STATE is not None else None)
    return recv


# ---- setup ----------------------------------------------------------------------------------------------


def env(name: str, default: str | None = None) -> str | None:
    """INTERNDEPLOY_<name>, else LMDEPLOY_<name> (the seeds' spelling), else `default`."""
    for prefix in _ENV_PREFIXES:
        value = os.environ.get(prefix + name)
        if value:
            return value
    return default


def interface_of(ip: str) -> str | None:
    """The name of the network interface that holds IPv4 address `ip` (Linux), or None."""
    for _, name in socket.if_nameindex():
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                req = struct.pack("256s", name.encode()[:15])
                addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])  # SIOCGIFADDR
        except OSError:
            continue
        if addr == ip:
            return name
    return None


def bind_collectives_to(ip: str) -> None:
    """Make gloo and NCCL open their sockets on the interface holding local address `ip` (unless set)."""
    if ip.startswith("127."):  # one node: gloo on loopback; NCCL keeps its own choice (its bootstrap is local)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        return
    name = interface_of(ip)
    if name is None:
        logger.warning("no local interface holds %s; gloo/NCCL choose their own interface", ip)
        return
    for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        os.environ.setdefault(var, name)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def local_ip_towards(host: str) -> str:
    """The address of this machine on the interface that routes to `host` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((socket.gethostbyname(host), 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _store(addr: str, port: int, world_size: int, is_master: bool) -> dist.TCPStore:
    """The rendezvous store; the master's socket is bound to `addr` only (TCPStore itself binds all interfaces)."""
    timeout = datetime.timedelta(minutes=10)
    if not is_master:
        return dist.TCPStore(addr, port, world_size, False, timeout=timeout)
    sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((addr, port))
    sock.listen(1024)
    try:
        return dist.TCPStore(addr, port, world_size, True, timeout=timeout, master_listen_fd=sock.fileno())
    finally:
        sock.detach()  # the store owns the file descriptor now


def init_distributed(
    *,
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    device: torch.device,
    tp_size: int,
    ep_size: int,
    ep_tokens_replicated: bool,
) -> ParallelState:
    """Join the world (collective: every rank calls it) and set the process's ParallelState."""
    global _STATE
    if _STATE is not None:
        raise RuntimeError("this process already runs a distributed engine; shut it down first")
    bind_collectives_to(local_ip_towards(master_addr))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = _store(master_addr, master_port, world_size, rank == 0)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
    cpu_group = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    tp_rank = rank % tp_size
    ep_rank = rank if ep_size > 1 else 0
    one_shot = control = None
    if tp_size == world_size > 1:
        one_host = _all_on_one_host(cpu_group)
        if device.type == "cuda":
            one_shot = OneShotAllReduce.create(device, cpu_group, one_host)
        control = _shm_control(rank, world_size, cpu_group, one_host, device)
    _STATE = ParallelState(rank, world_size, tp_rank, tp_size, ep_rank, ep_size, ep_tokens_replicated, device,
                           cpu_group, one_shot, control)
    logger.info("rank %d/%d joined (%s, tp %d, ep %d) via %s:%d", rank, world_size, backend, tp_size, ep_size,
                master_addr, master_port)
    return _STATE


def _all_on_one_host(cpu_group: dist.ProcessGroup) -> bool:
    host = int.from_bytes(hashlib.sha256(socket.gethostname().encode()).digest()[:7], "little")
    span = torch.tensor([host, -host], dtype=torch.int64)
    dist.all_reduce(span, op=dist.ReduceOp.MIN, group=cpu_group)  # [min, -max]: equal when one host
    return int(span[0]) == -int(span[1])


def _shm_control(
    rank: int, world_size: int, cpu_group: dist.ProcessGroup, one_host: bool, device: torch.device
) -> ShmBroadcast | None:
    """Collective: the shared-memory channel for rank 0's step messages, or None on every rank (gloo then).
    On by default for GPU ranks of one x86-64 host; INTERNDEPLOY_TP_CONTROL=shm|gloo forces it either way
    (shm still needs one host)."""
    want = (env("TP_CONTROL", "") or "").lower()
    ok = int(one_host and shm_broadcast.supported() and (want == "shm" or (want != "gloo" and device.type == "cuda")))
    channel = None
    if rank == 0 and ok:
        try:
            channel = ShmBroadcast.create(world_size - 1)
        except OSError as e:
            logger.info("no shared memory for the step messages (%s); they go over gloo", e)
            ok = 0
    name = broadcast_ints([ok, *map(ord, channel.name)] if channel is not None else [ok], group=cpu_group)
    if rank != 0 and name[0]:
        try:
            channel = ShmBroadcast.attach("".join(map(chr, name[1:])), world_size - 1, rank - 1)
        except OSError as e:
            logger.info("cannot attach rank 0's shared memory (%s); step messages go over gloo", e)
            ok = 0
    agree = torch.tensor([ok and name[0]], dtype=torch.int64)
    dist.all_reduce(agree, op=dist.ReduceOp.MIN, group=cpu_group)
    if int(agree.item()) == 0:
        if channel is not None:
            channel.close()
        return None
    logger.info("rank %d: step messages through shared memory %s", rank, channel.name)
    return channel


_DESTROY_TIMEOUT_S = 10.0


def destroy_distributed() -> None:
    global _STATE
    if _STATE is None:
        return
    if _STATE.control is not None:
        _STATE.control.close()
    _STATE = None
    if not dist.is_initialized():
        return

    def destroy() -> None:
        try:
            dist.destroy_process_group()
        except Exception:  # a peer already gone: nothing left to tear down cleanly
            logger.debug("destroy_process_group failed", exc_info=True)

    # NCCL's teardown can block for good (a peer gone first, work captured in CUDA graphs): bounded, since the
    # process is leaving and its exit frees the communicators anyway
    worker = threading.Thread(target=destroy, name="interndeploy-destroy-pg", daemon=True)
    worker.start()
    worker.join(timeout=_DESTROY_TIMEOUT_S)
    if worker.is_alive():
        logger.warning("the process group did not shut down within %.0f s; leaving it to the process exit",
                       _DESTROY_TIMEOUT_S)


# ---- control messages: int64 tensors over the gloo group ---------------------------------------------------

_HEADER = 256  # int64 words sent in the first broadcast; longer messages add a second one


def broadcast_ints(
    values: list[int] | None, src: int = 0, group: dist.ProcessGroup | None = None
) -> list[int] | None:
    """Rank `src` sends `values` (None = shutdown) to every rank of the world; the others get them back.
    Plain integers: through the shared-memory channel when the world has one (src 0), else int64 tensors
    over the gloo group. No pickle crosses either."""
    control = _STATE.control if _STATE is not None and src == 0 and group is None else None
    if control is not None:
        if _STATE.rank == src:
            if control.write(values):
                return values
        else:
            got = control.read()
            if got != shm_broadcast.OVERFLOW:
                return got
    return _broadcast_ints_gloo(values, src, group or (_STATE.cpu_group if _STATE is not None else None))


def _broadcast_ints_gloo(values: list[int] | None, src: int, group: dist.ProcessGroup | None) -> list[int] | None:
    head = torch.zeros(_HEADER, dtype=torch.int64)
    if dist.get_rank() == src:
        n = -1 if values is None else len(values)
        head[0] = n
        if values:
            first = array.array("q", values[: _HEADER - 1])
            head[1 : 1 + len(first)] = torch.frombuffer(first, dtype=torch.int64)
        dist.broadcast(head, src, group=group)
        if n > _HEADER - 1:
            rest = torch.tensor(values[_HEADER - 1 :], dtype=torch.int64)
            dist.broadcast(rest, src, group=group)
        return values
    dist.broadcast(head, src, group=group)
    n = int(head[0])
    if n < 0:
        return None
    out = head[1 : 1 + min(n, _HEADER - 1)].tolist()
    if n > _HEADER - 1:
        rest = torch.empty(n - (_HEADER - 1), dtype=torch.int64)
        dist.broadcast(rest, src, group=group)
        out += rest.tolist()
    return out


def all_reduce_max_ints(values: list[int]) -> list[int]:
    """Element-wise max over the world, on the control group (the DP engines' lock-step handshake)."""
    t = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_STATE.cpu_group if _STATE is not None else None)
    return t.tolist()


def all_reduce_min_int(value: int) -> int:
    """Minimum over the world (the KV block count every rank can hold)."""
    if _STATE is None or _STATE.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_STATE.cpu_group)
    return int(t)
