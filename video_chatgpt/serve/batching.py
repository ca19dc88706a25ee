"""Dynamic batching: concurrent requests share ``generate`` calls; each request gets its own stream of text.

``LocalBackend`` owns the ``Engine`` (the model in this process) and one ``Batcher`` thread. A request is a ``Job``;
``submit`` queues it (``QueueFull`` beyond ``max_queue`` waiting jobs). The batcher takes the oldest waiting job and
every other waiting job of its group (up to ``max_batch_size``): the same sampling settings (temperature 0 is one
group whatever ``top_p``/``seed`` say; a job with a ``seed`` runs alone, so its answer does not depend on its
neighbours) and the same video token count. It left-pads their prompts and runs one ``Engine.generate_batch``. Each
step's new tokens go to each job's own ``Detokenizer``; a job ends on ``</s>``, on one of its ``stop`` strings, at
its own ``max_tokens``, or when it is cancelled (its client went away), without ending the others. At temperature 0
a job's answer is the one it gets alone (the attention mask and position ids ignore the padding): ``tests/serve``
checks this.

Events go to the job's ``emit`` callback, from the batcher thread: ``Piece(text)``, then ``Done(finish_reason,
prompt_tokens, completion_tokens)`` or ``Failed(message)``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from video_chatgpt.inference.engine import Detokenizer, Engine, StepStreamer

logger = logging.getLogger(__name__)

BATCH_WAIT_S = 0.01  # how long an idle batcher waits for more requests to join the first one


class QueueFull(Exception):
    """More than ``max_queue`` requests are waiting."""


@dataclass(frozen=True)
class Piece:
    text: str


@dataclass(frozen=True)
class Done:
    finish_reason: str  # "stop" (</s> or a stop string) or "length" (max_tokens or the model's context)
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str


Event = Piece | Done | Failed


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def group(self) -> tuple:
        """Jobs with the same group share a batch: greedy ones all together; a seeded job alone (its own id)."""
        if self.temperature <= 0:
            return ("greedy",)
        return (self.temperature, self.top_p, self.seed)


@dataclass(eq=False)
class Job:
    """One request: its prompt (``Engine.prepare``'s ids and (1, N, C) features), settings and event sink."""

    ids: list[int]
    features: torch.Tensor
    max_tokens: int  # already capped by the room the model's context leaves
    emit: Callable[[Event], None]
    sampling: Sampling = Sampling()
    stop: tuple[str, ...] = ()
    cancelled: threading.Event = field(default_factory=threading.Event)
    # the batcher's state while the job runs
    text: Detokenizer | None = None
    held: str = ""  # text decoded but not sent: it may be the start of a stop string
    generated: int = 0
    finished: bool = False

    def group(self) -> tuple:
        """Jobs of one group can share a batch: the same sampling group and the same video token count."""
        return (self.sampling.group(), tuple(self.features.shape[1:]))

    def cancel(self) -> None:
        """The client went away: stop generating for this job at the next token (others go on)."""
        self.cancelled.set()


class Batcher:
    """The thread that runs batches of jobs on an ``Engine`` (see the module doc)."""

    def __init__(self, engine: Engine, max_batch_size: int, max_queue: int):
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._waiting: list[Job] = []
        self._running = 0
        self._cond = threading.Condition()
        self._closed = False
        self.stats = {"batches": 0, "requests": 0, "largest_batch": 0}
        self._thread = threading.Thread(target=self._loop, name="video-chatgpt-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------- the queue
    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (--max_queue {self.max_queue})")
            self._waiting.append(job)
            self._cond.notify()

    def load(self) -> dict:
        with self._cond:
            return {"waiting": len(self._waiting), "running": self._running, **self.stats}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in self._waiting:
                job.emit(Failed("the server is shutting down"))
            self._waiting.clear()
            self._cond.notify()
        self._thread.join(timeout=30)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            # Idle until now: give requests arriving together a moment to join.
            self._cond.wait_for(lambda: len(self._waiting) >= self.max_batch_size or self._closed, BATCH_WAIT_S)
            self._waiting = [job for job in self._waiting if not job.cancelled.is_set()]
            if not self._waiting:
                return []
            group = self._waiting[0].group()
            same = [job for job in self._waiting if job.group() == group]
            batch = same[: 1 if self._waiting[0].sampling.seed is not None else self.max_batch_size]
            self._waiting = [job for job in self._waiting if job not in batch]
            self._running = len(batch)
            self.stats["batches"] += 1
            self.stats["requests"] += len(batch)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            if batch:
                self._run(batch)
            with self._cond:
                self._running = 0

    # ----------------------------------------------------------------------------------------- generation
    def _run(self, batch: list[Job]) -> None:
        for job in batch:
            job.text = Detokenizer(self.engine.tokenizer)
        sampling = batch[0].sampling
        try:
            self.engine.generate_batch(
                [(job.ids, job.features) for job in batch],
                streamer=StepStreamer(lambda tokens: self._step(batch, tokens)),
                stopping_criteria=StoppingCriteriaList([_JobsFinished(batch)]),
                max_new_tokens=max(job.max_tokens for job in batch),
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=sampling.seed,
            )
        except Exception as exc:  # noqa: BLE001 - every job of the batch hears of it; the server goes on
            logger.exception("generation failed for a batch of %d", len(batch))
            for job in batch:
                if not job.finished:
                    job.finished = True
                    job.emit(Failed(f"generation failed: {type(exc).__name__}: {exc}"))
            return
        for job in batch:  # the batch reached its longest max_tokens
            if not job.finished:
                self._finish(job, "length")

    def _step(self, batch: list[Job], tokens: list[int]) -> None:
        eos = self.engine.tokenizer.eos_token_id
        for job, token in zip(batch, tokens):
            if job.finished:
                continue
            if job.cancelled.is_set():
                job.finished = True  # nobody listens any more
                continue
            job.generated += 1
            if token == eos:
                self._finish(job, "stop")
                continue
            self._send(job, job.text.add([token]))
            if not job.finished and job.generated >= job.max_tokens:
                self._finish(job, "length")

    def _send(self, job: Job, piece: str) -> None:
        """Pass ``piece`` on, up to the first stop string (which finishes the job); text that may be the start of a
        stop string is held back until it is known not to be one."""
        text = job.held + piece
        cut = first_stop(text, job.stop)
        if cut is not None:
            self._end(job, text[:cut], "stop")
            return
        keep = max((k for s in job.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        job.held, out = text[len(text) - keep :], text[: len(text) - keep]
        if out:
            job.emit(Piece(out))

    def _finish(self, job: Job, reason: str) -> None:
        """``</s>`` or the token limit: the rest of the text (up to a stop string in it), then ``Done``."""
        text = job.held + job.text.finish()
        cut = first_stop(text, job.stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
        self._end(job, text, reason)

    def _end(self, job: Job, text: str, reason: str) -> None:
        job.finished, job.held = True, ""
        if text:
            job.emit(Piece(text))
        job.emit(Done(reason, len(job.ids), job.generated))


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first of ``stops`` begins in ``text`` (None: nowhere)."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


class _JobsFinished(StoppingCriteria):
    """Ends each row whose job is finished or cancelled; the others go on."""

    def __init__(self, batch: list[Job]):
        self.batch = batch

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = [job.finished or job.cancelled.is_set() for job in self.batch]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class Backend(Protocol):
    """What the server needs of a generation backend. ``engine``: the model's tokenizer, template, feature checks
    and vision tower (``Engine.prepare`` makes a ``Job``'s prompt); ``submit`` queues a job (``QueueFull`` when
    full) whose events go to ``job.emit``; ``load`` is the ``/health`` numbers; ``close`` stops it."""

    name: str
    engine: Engine

    def submit(self, job: Job) -> None: ...

    def load(self) -> dict: ...

    def close(self) -> None: ...


class LocalBackend:
    """Generation in this process: the loaded ``Engine`` and its ``Batcher``. The server talks to a backend
    through ``engine`` (features and prompts), ``submit``, ``load`` and ``close``; another backend (e.g. a vLLM
    client) offers the same four."""

    name = "local"

    def __init__(self, engine: Engine, max_batch_size: int = 8, max_queue: int = 64):
        self.engine = engine
        self.batcher = Batcher(engine, max_batch_size, max_queue)

    def submit(self, job: Job) -> None:
        self.batcher.submit(job)

    def load(self) -> dict:
        return self.batcher.load()

    def close(self) -> None:
        self.batcher.close()
