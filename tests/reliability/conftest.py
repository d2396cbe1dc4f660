"""Options and servers of the reliability suite.

The fast subset runs in CI. `--run-soak` runs the full soak (2,000 streaming requests at concurrency 64 by
default) on `--soak-model` (default: the `demo` model when it resolves, else the tiny random InternLM2) and,
with `--reliability-report FILE`, writes its figures as JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import TINY_FLAGS, ServerProcess, start_server


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reliability")
    group.addoption("--run-soak", action="store_true", help="run the full soak test (minutes)")
    group.addoption("--soak-model", default=None, help="model of the full soak (default: demo, else tiny random)")
    group.addoption("--soak-requests", type=int, default=2000, help="requests of the full soak")
    group.addoption("--soak-concurrency", type=int, default=64, help="concurrent clients of the full soak")
    group.addoption("--reliability-report", default=None, help="write the soak and fuzz figures to this JSON file")


def demo_model() -> str | None:
    """"demo" when interndeploy resolves that name to a model directory, else None."""
    from interndeploy.model_dir import load_model_info

    try:
        load_model_info("demo")
    except (ValueError, OSError):
        return None
    return "demo"


@pytest.fixture(scope="session")
def report(request: pytest.FixtureRequest) -> Iterator[dict]:
    """Figures the tests add (soak, fuzz); written to --reliability-report at the end of the session."""
    import json

    figures: dict = {}
    yield figures
    path = request.config.getoption("--reliability-report")
    if path and figures:
        Path(path).write_text(json.dumps(figures, indent=2) + "\n")


@pytest.fixture
def tiny_server(internlm2_dir: Path, tmp_path: Path):
    """A factory: the tiny model behind the real CLI with extra flags; every server is stopped at the end."""
    servers: list[ServerProcess] = []

    def start(*flags: str, headers: dict[str, str] | None = None) -> ServerProcess:
        server = start_server(internlm2_dir, *TINY_FLAGS, *flags, log_dir=tmp_path, headers=headers)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
