"""`serve api_server --dp N [--ep N] --proxy-url URL [--nnodes M --node-rank r]`: one api_server per DP engine.

Each node starts N / M servers, engine k of node r being DP rank r * N / M + k, on port --server-port + k
and (on GPUs) CUDA_VISIBLE_DEVICES = its tp GPUs; each registers with the proxy, which routes among them
(seed 001's second recipe). With --ep N the engines also form one expert-parallel group over
torch.distributed, rendezvousing at INTERNDEPLOY_DP_MASTER_ADDR:INTERNDEPLOY_DP_MASTER_PORT (LMDEPLOY_DP_*
also read; on one node they default to 127.0.0.1 and a free port). The store binds to that address only:
give the cluster interface's address, not 0.0.0.0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

from .. import distributed
from ..config import ConfigError, EngineConfig

logger = logging.getLogger("interndeploy")

RANK_ENV = "INTERNDEPLOY_DP_RANK"  # set by the launcher in each server it starts


def replica_rank() -> int | None:
    """This server's DP rank when the launcher started it, else None."""
    value = os.environ.get(RANK_ENV)
    return int(value) if value is not None else None


def check_distributed_args(args: argparse.Namespace) -> None:
    if args.dp > 1 and not args.proxy_url:
        raise ConfigError(f"--dp {args.dp} starts {args.dp} api_servers; start `interndeploy serve proxy` and "
                          "pass its address with --proxy-url so that clients reach them through it")
    if args.nnodes > 1 and args.dp == 1 and args.distributed_executor_backend != "ray" and args.tp > 1:
        raise ConfigError("a --tp engine spans nodes through Ray: start Ray on every node (`ray start`) and run "
                          "the server on node 0 (with --distributed-executor-backend ray)")
    if args.nnodes > 1 and args.dp > 1 and not distributed.env("DP_MASTER_ADDR"):
        raise ConfigError("--nnodes > 1 with --dp needs INTERNDEPLOY_DP_MASTER_ADDR (or LMDEPLOY_DP_MASTER_ADDR) "
                          "set to node 0's cluster address on every node")


def launch(args: argparse.Namespace, cfg: EngineConfig, argv: list[str] | None = None) -> int:
    """Start this node's DP servers as child processes (re-running this command line) and wait for them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    per_node = cfg.dp // cfg.nnodes
    env = dict(os.environ)
    if cfg.ep > 1 and not distributed.env("DP_MASTER_ADDR"):
        env["INTERNDEPLOY_DP_MASTER_ADDR"] = "127.0.0.1"
    if cfg.ep > 1 and not distributed.env("DP_MASTER_PORT"):
        env["INTERNDEPLOY_DP_MASTER_PORT"] = str(distributed.free_port())
    gpus = _visible_gpus(cfg)
    procs = []
    for k in range(per_node):
        rank = cfg.node_rank * per_node + k
        child = dict(env, **{RANK_ENV: str(rank)})
        if gpus is not None:
            if len(gpus) < per_node * cfg.tp:
                raise ConfigError(f"--dp {cfg.dp} x --tp {cfg.tp} over {cfg.nnodes} node(s) needs "
                                  f"{per_node * cfg.tp} GPUs on this node, {len(gpus)} are visible")
            child["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[k * cfg.tp : (k + 1) * cfg.tp])
        cmd = [sys.executable, "-m", "interndeploy.cli.main", *argv, "--server-port", str(args.server_port + k)]
        procs.append(subprocess.Popen(cmd, env=child))
        print(f"interndeploy: started DP engine {rank} of {cfg.dp} (pid {procs[-1].pid}) on port "
              f"{args.server_port + k}", flush=True)

    def stop(*_: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:  # one engine gone leaves the others unable to run their MoE layers: stop them all
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    finally:
        stop()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    codes = [p.returncode for p in procs]
    return max(abs(c) for c in codes if c is not None) if any(codes) else 0


def _visible_gpus(cfg: EngineConfig) -> list[str] | None:
    if cfg.device == "cpu":
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(torch.cuda.device_count())]
