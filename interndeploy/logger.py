"""The package logger: one stderr handler on the `interndeploy` logger, level set by the entry point."""

from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | int = "INFO") -> logging.Logger:
    logger = logging.getLogger("interndeploy")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    os.environ["INTERNDEPLOY_LOG_LEVEL"] = logging.getLevelName(logger.level)  # worker processes log alike
    return logger
