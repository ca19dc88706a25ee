"""The judge of ``evaluate``: the shared LLM client (``video_chatgpt.llm_client``) reading VCGBench verdicts.

Everything about the HTTP exchange (the total deadline, the reply size cap, retries with backoff and
``Retry-After``, unusable replies asked again, 401/403/404 stopping the run) is ``video_chatgpt.llm_client``'s,
shared with ``data generate``; this module adds only how a judge's reply is read (``protocol.parse_reply``).
"""

from __future__ import annotations

from video_chatgpt.eval.protocol import parse_reply
from video_chatgpt.llm_client import Asker, ClientSettings, ServerRefused

# The judge's names for the shared client's settings and its run-stopping refusal (one class each, two names).
JudgeSettings = ClientSettings
JudgeRefused = ServerRefused


class Judge(Asker):
    """Asks one verdict per record with bounded retries. Thread-safe: one instance serves all workers."""

    def __init__(self, settings: ClientSettings, api_key: str, jitter_seed: int | None = None) -> None:
        super().__init__(settings, api_key, jitter_seed, role="judge")

    def judge(self, messages: list[dict[str, str]], kind: str) -> dict:
        """``{"ok", "reply", "reason", "raw", "attempts", "model"}`` for one record; never raises but ``JudgeRefused``."""
        return self.ask(messages, lambda text: parse_reply(text, kind))
