"""Run the app under uvicorn; SIGINT/SIGTERM stop it gracefully with exit status 0."""

from __future__ import annotations

import signal
import socket
from types import FrameType

import uvicorn
from loguru import logger

from imp_core.errors import ImpError
from imp_core.serve.app import ServerState, create_app


class _GracefulServer(uvicorn.Server):
    """uvicorn re-raises a caught signal after its graceful shutdown (so the process dies of it);
    here a signal is a request to stop, and stopping cleanly exits 0."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            logger.info("{}: no new requests; finishing the ones in flight", signal.Signals(sig).name)
            self._state.scheduler.stop_accepting()
            self.should_exit = True
        elif sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: do not wait any longer


def check_address(host: str, port: int) -> None:
    """Fail with one line now, not with a uvicorn traceback after the model has loaded."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise ImpError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(state: ServerState, *, host: str, port: int, shutdown_timeout: float) -> None:
    config = uvicorn.Config(create_app(state), host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=shutdown_timeout, lifespan="on")
    server = _GracefulServer(config, state)
    logger.info("serving {} on http://{}:{}/v1", state.model_name, host, port)
    server.run()
    logger.info("server stopped")
