"""Evaluation stage: VCGBench (five criteria) and zero-shot video QA, judged by any OpenAI-compatible LLM.

``protocol`` (pure: prompts, keys, parsing, aggregation), ``judge`` (the HTTP client with bounded retries),
``report`` (results.md), ``evaluate`` (``video-chatgpt evaluate``: the thin I/O shell).
"""
