"""Helpers shared by several test modules, by area: ``data`` (training data, forged feature files), ``train``
(training flags and loaders), ``weights`` (model folders); here the repository path, the subprocess environment, a
free port and the shared constants.

Test modules import from these modules (and from the other non-test modules: ``features/reference.py``,
``bases/world.py``, ``eval/server.py``), never from another ``test_*.py`` or a ``conftest.py``; fixtures live in the
``conftest.py`` files, where pytest finds them (``tests/test_layout.py`` checks this). Each module imports only what
it needs, so a test of the data stage does not pay for loading the model code.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The environment of a training subprocess: offline, one thread per process (two processes share two cores).
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

FAMILIES = ("llama3", "mistral", "qwen2")  # the tiny chat-model families of the ``chat_bases`` fixture
QUESTION = "What colour is the moving object in the video?"
SECOND_QUESTION = "Which way does it move?"
MAX_NEW_TOKENS = 24  # the demo's answers stay short; the same value is given to the demo and to `chat`


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for torchrun's master and the demo server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
