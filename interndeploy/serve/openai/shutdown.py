"""Graceful shutdown of `serve api_server` (SIGTERM, or the first Ctrl-C) with `--shutdown-timeout`.

    signal ──▶ drain: stop listening; new generation requests 503, /health 503
           ──▶ in-flight requests run on for up to shutdown_timeout seconds
           ──▶ then every request still running is aborted: its stream ends with finish_reason "abort" and
               `data: [DONE]` (a non-streaming one answers with that finish_reason)
           ──▶ uvicorn closes the connections, the process exits 0

uvicorn re-raises the signal it caught once it has shut down; SIGTERM's default action would then kill the
process before the engine is shut down, so the re-raised SIGTERM is ignored (and the re-raised Ctrl-C caught, as
`uvicorn.run` does) and the caller exits normally.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import uvicorn

from .state import ServerState

logger = logging.getLogger("interndeploy")

ABORT_GRACE_S = 5.0  # after the abort: time for the streams to send their last events before uvicorn cancels them


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState, shutdown_timeout: float) -> None:
        super().__init__(config)
        self.state = state
        self.shutdown_timeout = shutdown_timeout

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        self.state.draining = True
        running = self.state.num_running
        logger.info("shutting down: %d request(s) in flight get up to %.1f s (--shutdown-timeout)",
                    running, self.shutdown_timeout)
        timer = asyncio.get_running_loop().call_later(self.shutdown_timeout, self._abort_all)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    def _abort_all(self) -> None:
        aborted = self.state.abort(abort_all=True)
        if aborted:
            logger.warning("--shutdown-timeout %.1f s reached: aborted %d request(s)", self.shutdown_timeout, aborted)


def run_server(app: Any, *, host: str, port: int, log_level: str, shutdown_timeout: float,
               ssl_keyfile: str | None = None, ssl_certfile: str | None = None) -> None:
    """Serve `app` (from build_app) until a signal, then shut down as the module docstring says."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, ssl_keyfile=ssl_keyfile,
                            ssl_certfile=ssl_certfile, timeout_graceful_shutdown=shutdown_timeout + ABORT_GRACE_S)
    server = GracefulServer(config, app.state.server, shutdown_timeout)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # see the module docstring
    try:
        server.run()
    except KeyboardInterrupt:  # the re-raised Ctrl-C, as uvicorn.run swallows it
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
