"""The OpenAI-compatible HTTP server (`interndeploy serve api_server`)."""

from .server import build_app
from .state import ServerSettings

__all__ = ["ServerSettings", "build_app"]
