"""The executor owns an engine's ranks and runs each scheduled step on all of them.

    UniExecutor   one rank, in this process
    TPExecutor    --tp N: rank 0 (the driver) in this process, ranks 1..N-1 as workers, started with
                  torch.multiprocessing spawn (`--distributed-executor-backend mp`, one node) or as Ray
                  actors on an existing Ray cluster (`ray`, any number of nodes)
    DPExecutor    --dp N --ep N: this process is one of N engines sharing the experts; each has its own
                  scheduler, and they step together so that the MoE layers' all-to-alls pair up

A TP step: rank 0 turns the SchedulerOutput into StepInputs (plain ints), broadcasts them over the gloo
control group as one int64 message, and every rank runs the same forward; the vocabulary-parallel head
gathers the logits, and rank 0 alone samples. Workers do nothing but wait for the next message:

    rank 0:  schedule -> StepInputs --broadcast--> forward (all-reduces) -> logits -> sample
    rank r:               wait ----------------^   forward (all-reduces) -> (logits dropped)
"""

from __future__ import annotations

import cProfile
import logging
import os
import signal
import threading
import time
from dataclasses import replace
from typing import Any

import torch

from .. import distributed
from ..config import ConfigError, EngineConfig
from ..engine.scheduler import SchedulerOutput
from ..model_dir import ModelInfo
from .async_output import AsyncStepOutput
from .model_runner import ModelRunner, ModelRunnerOutput, pick_device
from .step_inputs import StepInputs

logger = logging.getLogger("interndeploy")


class Executor:
    runner: ModelRunner  # rank 0's runner, in this process (weights, KV spec, sampler, device)
    always_step: bool = False  # the engine must call execute() every iteration, even with nothing scheduled
    supports_async: bool = False  # launch() returns before the step ends, and a step may read pending tokens
    async_default: bool = False  # async scheduling when not asked either way (on a GPU)

    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        raise NotImplementedError

    def launch(self, sched: SchedulerOutput) -> AsyncStepOutput:
        """Start the step; its output comes with `.get()` (here: already done)."""
        return AsyncStepOutput.done(self.execute(sched))

    def shutdown(self) -> None:
        """Stop the workers and leave the process group; safe to call twice."""


class UniExecutor(Executor):
    def __init__(self, info: ModelInfo, cfg: EngineConfig, session_len: int, max_batch_size: int) -> None:
        self.runner = ModelRunner(info, cfg, session_len, max_batch_size)

    supports_async = True
    async_default = True

    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        return self.runner.execute(sched)

    def launch(self, sched: SchedulerOutput) -> AsyncStepOutput:
        return self.runner.launch(sched)


# ---- tensor parallel --------------------------------------------------------------------------------------


def _rank_config(cfg: EngineConfig, device: torch.device) -> EngineConfig:
    return replace(cfg, device=str(device))


def _cpu_threads(world_size: int) -> None:
    """Ranks sharing a CPU share its cores (the default, one thread per core each, oversubscribes)."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))


def run_worker(
    rank: int, world_size: int, master_addr: str, master_port: int, device: str, info: ModelInfo,
    cfg: EngineConfig, session_len: int, max_batch_size: int,
) -> None:
    """A tensor-parallel worker rank: join, build its shard of the model, then run the steps it is sent."""
    dev = torch.device(device)
    if dev.type == "cpu":
        _cpu_threads(world_size)
    distributed.init_distributed(rank=rank, world_size=world_size, master_addr=master_addr,
                                 master_port=master_port, device=dev, tp_size=world_size,
                                 ep_size=cfg.ep, ep_tokens_replicated=True)
    try:
        runner = ModelRunner(info, _rank_config(cfg, dev), session_len, max_batch_size)
        logger.info("tensor-parallel rank %d ready on %s", rank, dev)
        # INTERNDEPLOY_PROFILE_ENGINE=FILE profiles rank 0's engine thread; each worker's loop goes to FILE.rankN
        profile_to = os.environ.get("INTERNDEPLOY_PROFILE_ENGINE")
        prof = cProfile.Profile() if profile_to else None
        if prof:
            prof.enable()
        _serve_steps(runner)
        if prof:
            prof.disable()
            prof.dump_stats(f"{profile_to}.rank{rank}")
        runner.close()
    finally:
        distributed.destroy_distributed()


def _serve_steps(runner: ModelRunner) -> None:
    """A worker's loop: run every step rank 0 sends until it sends the end."""
    while True:
        msg = distributed.broadcast_ints(None)
        if msg is None:
            return
        step = StepInputs.unpack(msg)
        runner.run_step(step)
        if step.last_index:  # rank 0 sampled: its tokens are the next step's pending input ids
            runner.receive_sampled(len(step.last_index))


def _mp_worker_main(*args: Any) -> None:
    from ..logger import setup_logging

    setup_logging(os.environ.get("INTERNDEPLOY_LOG_LEVEL", "WARNING"))
    parent = os.getppid()
    if os.environ.get("INTERNDEPLOY_HANG_DUMP_S"):  # debugging a stuck rank: print its stacks periodically
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["INTERNDEPLOY_HANG_DUMP_S"]), repeat=True)

    def watch_parent() -> None:  # the engine process was killed: nothing will send the next step
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch_parent, daemon=True).start()
    try:
        run_worker(*args)
    except Exception:
        logger.exception("tensor-parallel worker rank %s failed", args[0])
        os._exit(1)  # close the sockets: peers blocked in a collective see the failure


class TPExecutor(Executor):
    def __init__(self, info: ModelInfo, cfg: EngineConfig, session_len: int, max_batch_size: int,
                 backend: str) -> None:
        self.world_size = cfg.tp
        self.backend = backend
        self._closed = False
        self._procs: list[Any] = []
        self._actors: list[Any] = []
        self._refs: list[Any] = []
        self._ray_owned = False
        self._pg = None
        base = pick_device(cfg.device)
        if backend == "ray":
            device, addr = self._start_ray(info, cfg, session_len, max_batch_size, base)
        else:
            device, addr = self._start_mp(info, cfg, session_len, max_batch_size, base)
        if device.type == "cpu":
            self._threads = torch.get_num_threads()
            _cpu_threads(self.world_size)
        try:
            distributed.init_distributed(rank=0, world_size=self.world_size, master_addr=addr,
                                         master_port=self._port, device=device, tp_size=self.world_size,
                                         ep_size=cfg.ep, ep_tokens_replicated=True)
            self.runner = ModelRunner(info, _rank_config(cfg, device), session_len, max_batch_size)
        except BaseException:
            self._stop_workers()
            distributed.destroy_distributed()
            raise
        if self._procs:
            threading.Thread(target=self._watch_workers, daemon=True).start()

    # ---- mp: one process per GPU of this node --------------------------------------------------------------

    def _start_mp(self, info: ModelInfo, cfg: EngineConfig, session_len: int, max_batch_size: int,
                  base: torch.device) -> tuple[torch.device, str]:
        if base.type == "cuda" and torch.cuda.device_count() < self.world_size:
            raise ConfigError(f"--tp {self.world_size} needs {self.world_size} GPUs on this node, "
                              f"{torch.cuda.device_count()} are visible; span nodes with "
                              "--distributed-executor-backend ray")
        addr = distributed.env("MASTER_ADDR") or "127.0.0.1"
        self._port = distributed.free_port(addr)
        ctx = torch.multiprocessing.get_context("spawn")
        for rank in range(1, self.world_size):
            device = f"cuda:{rank}" if base.type == "cuda" else "cpu"
            args = (rank, self.world_size, addr, self._port, device, info, cfg, session_len, max_batch_size)
            proc = ctx.Process(target=_mp_worker_main, args=args, name=f"interndeploy-tp{rank}", daemon=True)
            proc.start()
            self._procs.append(proc)
        return (torch.device("cuda:0") if base.type == "cuda" else base), addr

    def _watch_workers(self) -> None:
        from multiprocessing.connection import wait

        sentinels = {p.sentinel: p for p in self._procs}
        while sentinels and not self._closed:
            for s in wait(list(sentinels), timeout=1.0):
                proc = sentinels.pop(s)
                if self._closed:
                    return
                logger.error("tensor-parallel worker %s exited with code %s; the engine cannot run further steps",
                             proc.name, proc.exitcode)
                if self.runner.device.type == "cuda":  # NCCL would wait for it until its timeout: stop now
                    os.kill(os.getpid(), signal.SIGTERM)

    # ---- ray: actors on the GPUs of an existing cluster --------------------------------------------------------

    def _start_ray(self, info: ModelInfo, cfg: EngineConfig, session_len: int, max_batch_size: int,
                   base: torch.device) -> tuple[torch.device, str]:
        from . import ray_workers

        handles = ray_workers.start(self.world_size, info, cfg, session_len, max_batch_size, base.type == "cuda")
        self._ray_owned, self._pg, self._actors, self._refs, self._port, addr, device = handles
        return device, addr

    # ---- steps ---------------------------------------------------------------------------------------------

    # async scheduling works across ranks (each holds rank 0's sampled tokens); on 2 x H200 it took TP=2
    # batch-1 decode of the 7B shape from 4.44 to 3.58 ms/token (greedy tokens equal), so it is the default
    supports_async = True
    async_default = True

    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        return self.launch(sched).get()

    def launch(self, sched: SchedulerOutput) -> AsyncStepOutput:
        if self._closed:
            raise RuntimeError("the engine's tensor-parallel workers are shut down")
        if sched.is_empty:
            return AsyncStepOutput.done(ModelRunnerOutput())
        step = StepInputs.from_scheduler_output(sched, self.runner._prev_rows)
        distributed.broadcast_ints(step.pack())
        return self.runner.launch(sched, step)

    def _stop_workers(self) -> None:
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        if self.backend == "ray":
            from . import ray_workers

            ray_workers.stop(self._ray_owned, self._pg, self._actors, self._refs)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            distributed.broadcast_ints(None)
        except Exception:  # a worker already gone
            logger.debug("shutdown broadcast failed", exc_info=True)
        self._stop_workers()
        self.runner.close()
        distributed.destroy_distributed()
        if getattr(self, "_threads", None):
            torch.set_num_threads(self._threads)


# ---- data parallel + expert parallel ----------------------------------------------------------------------


class DPExecutor(Executor):
    """One of `dp` engines in one expert group. Each iteration the engines agree whether any has work;
    if one does, all run a forward (an idle one a dummy token) since every MoE layer is a collective."""

    always_step = True
    _IDLE_SLEEP = (0.0005, 0.05)  # seconds between handshakes when all are idle: first, and at most

    def __init__(self, info: ModelInfo, cfg: EngineConfig, session_len: int, max_batch_size: int) -> None:
        addr = distributed.env("DP_MASTER_ADDR", "127.0.0.1")
        port = int(distributed.env("DP_MASTER_PORT", "29555"))
        device = pick_device(cfg.device)
        if device.type == "cuda":
            device = torch.device("cuda:0")  # the launcher gives each DP engine its own CUDA_VISIBLE_DEVICES
        else:
            _cpu_threads(cfg.dp // max(1, cfg.nnodes))
        self._closed = False
        self._broken: str | None = None
        self._idle = 0.0
        distributed.init_distributed(rank=cfg.dp_rank, world_size=cfg.dp, master_addr=addr, master_port=port,
                                     device=device, tp_size=1, ep_size=cfg.ep, ep_tokens_replicated=False)
        try:
            # token counts of an all-to-all are known only on the host: decode is not graph-captured
            self.runner = ModelRunner(info, replace(_rank_config(cfg, device), eager_mode=True), session_len,
                                      max_batch_size)
        except BaseException:
            distributed.destroy_distributed()
            raise

    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        if self._broken:
            raise RuntimeError(self._broken)
        try:
            (busy,) = distributed.all_reduce_max_ints([0 if sched.is_empty else 1])
            if not busy:
                self._idle = min(max(self._idle * 2, self._IDLE_SLEEP[0]), self._IDLE_SLEEP[1])
                time.sleep(self._idle)
                return ModelRunnerOutput()
            self._idle = 0.0
            if sched.is_empty:
                self.runner.run_step(StepInputs.make_dummy())
                return ModelRunnerOutput()
            return self.runner.execute(sched)
        except RuntimeError as e:
            if "DP group" not in str(e):
                self._broken = f"the DP group is broken (a peer engine failed or exited): {e}"
                self.always_step = False
            raise

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.always_step = False
        distributed.destroy_distributed()


def executor_backend(cfg: EngineConfig) -> str:
    """uni for one rank; mp when this node has the GPUs (or on CPU); ray beyond, or when asked."""
    if cfg.distributed_executor_backend:
        return cfg.distributed_executor_backend
    if cfg.tp == 1:
        return "uni"
    device = pick_device(cfg.device)
    if device.type == "cuda" and torch.cuda.device_count() < cfg.tp:
        return "ray"
    return "mp"


def create_executor(info: ModelInfo, cfg: EngineConfig, session_len: int, max_batch_size: int) -> Executor:
    if cfg.dp > 1 and cfg.ep > 1:
        return DPExecutor(info, cfg, session_len, max_batch_size)
    backend = executor_backend(cfg)
    if backend == "uni" or cfg.tp == 1:
        return UniExecutor(info, cfg, session_len, max_batch_size)
    return TPExecutor(info, cfg, session_len, max_batch_size, backend)
