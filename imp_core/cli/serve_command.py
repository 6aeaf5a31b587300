"""`imp serve`: load the model once, then answer the OpenAI API over HTTP."""

from __future__ import annotations

from pathlib import Path

from imp_core.cli.run_command import sampling_params
from imp_core.logging import log_plan
from imp_core.plugin.manager import PluginSet
from imp_core.run.session import load_session
from imp_core.serve.app import ServerState
from imp_core.serve.engine import Engine
from imp_core.serve.metrics import ServerMetrics
from imp_core.serve.scheduler import FifoScheduler
from imp_core.serve.server import check_address, serve
from imp_core.settings.resolve import ResolvedSettings


def serve_model(model_path: Path, resolved: ResolvedSettings, plugins: PluginSet, *, host: str, port: int,
                model_name: str | None, max_queue: int, api_key: str | None, shutdown_timeout: float) -> None:
    check_address(host, port)
    session = load_session(model_path, resolved, plugins)
    insp = session.inspection
    resolved = insp.settings
    metrics = ServerMetrics()
    scheduler = FifoScheduler(Engine(session).run, max_queue, on_queue_change=metrics.queue_length.set,
                              on_finished=metrics.job_finished)
    state = ServerState(session=session, model_name=model_name or model_path.name, hook=plugins.hook,
                        scheduler=scheduler, defaults=sampling_params(resolved),
                        default_max_tokens=resolved.settings.runtime.max_tokens, api_key=api_key,
                        metrics=metrics)
    insp.plan.append(("server", f"http://{host}:{port}/v1 as '{state.model_name}', one sequence at a time, "
                                f"queue {max_queue}, api key {'on' if api_key else 'off'}, cuda graphs off"))
    log_plan("resolved plan", insp.plan)
    serve(state, host=host, port=port, shutdown_timeout=shutdown_timeout)
