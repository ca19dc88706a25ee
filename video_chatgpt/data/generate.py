"""``video-chatgpt data generate``: instruction data (VideoInstruct JSON) from a folder of videos, any VLM and LLM.

Run (any OpenAI-compatible servers: vLLM, llama.cpp's ``llama-server``, Ollama's ``/v1``, OpenAI; see
docs/own-videos.md for serving them locally)::

    video-chatgpt data generate --video_dir my_videos/ --output_json my_videos_qa.json \\
        --vlm_model Qwen/Qwen2.5-VL-7B-Instruct --vlm_api_base http://localhost:8000/v1 \\
        --llm_model Qwen/Qwen2.5-7B-Instruct --llm_api_base http://localhost:8001/v1 \\
        [--captions my_captions.json] [--keyframes 8] [--kinds summary,descriptive,temporal] [--num_workers 4]
    video-chatgpt convert --input_json_file my_videos_qa.json --output_json_file my_videos_training.json

Per video (its id is the file name before the first dot, as ``convert`` and the feature extractor use it), four
steps, each answer cached under ``<output_json>.cache/<video id>/`` as it arrives: **keyframes** (``data.keyframes``),
one VLM **caption** per keyframe, one LLM **description**, one LLM request per ``--kinds`` for **QA pairs** (read by
``parse_pairs``, filtered by ``clean_pairs``). The prompts are ``video_chatgpt/data/prompts/``. A rerun asks only
what is missing and refuses other settings (``check_cache_settings``). Written: ``--output_json`` (``[{"video_id",
"q", "a"}]``, what ``convert`` reads) and ``<output_json stem>.provenance.jsonl``. docs/own-videos.md has the whole
story: servers, steps, cache, output, what is dropped.

Exit status 0 when every video is done or skipped (undecodable), 1 when some request failed (listed; rerun to
retry), 2 on bad flags.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from video_chatgpt.args import parse_args_or_status
from video_chatgpt.data.keyframes import extract_keyframes
from video_chatgpt.errors import UserError, run_main
from video_chatgpt.features.decode import DECODE_ERRORS, VideoDecodeError
from video_chatgpt.features.store import video_id_of
from video_chatgpt.files import (
    check_output,
    read_json,
    remove_leftover_temporaries,
    write_bytes_atomically,
    write_json_atomically,
    write_text_atomically,
)
from video_chatgpt.llm_client import Asker, ClientSettings, ServerRefused, api_host, key_from_environment

KINDS = ("summary", "descriptive", "temporal", "spatial", "reasoning", "consistency")
ORIGINAL_KINDS = ("summary", "descriptive")  # the original's data/generate_*.py kinds
PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
PROMPT_NAMES = ("caption", "describe", "qa_common", *(f"qa_{kind}" for kind in KINDS))
PAIRS_PER_KIND = 3  # pairs asked per kind and video (the consistency kind: items of two questions each)
MAX_IMAGE_SIDE = 512  # keyframes sent to the VLM: at most this many pixels on the longer side
MAX_ANSWER_WORDS = 250  # longer answers are dropped (a model that rambles or repeats itself)
MAX_CAPTION_CHARS = 2000
MAX_DESCRIPTION_CHARS = 8000
CACHE_VERSION = 1
DEFAULT_API_BASE = "http://localhost:8000/v1"  # vLLM's default port

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_WORD = re.compile(r"[a-z0-9']+")


# ----------------------------------------------------------------------------------------------------- prompts
def load_prompts() -> dict[str, str]:
    """The prompt files by name (``caption``, ``describe``, ``qa_common``, ``qa_<kind>``)."""
    return {name: (PROMPTS_DIR / f"{name}.txt").read_text(encoding="utf-8") for name in PROMPT_NAMES}


def prompt_hashes(prompts: dict[str, str]) -> dict[str, str]:
    return {name: hashlib.sha256(text.encode("utf-8")).hexdigest() for name, text in prompts.items()}


def caption_messages(prompts: dict[str, str], time: float, jpeg: bytes) -> list[dict]:
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
    text = prompts["caption"].strip().replace("{time}", f"{time:.1f} s")
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
    return [{"role": "user", "content": content}]


def describe_messages(prompts: dict[str, str], captions: list[tuple[float, str]], user_caption: str | None) -> list:
    lines = "\n".join(f"[{time:.1f} s] {caption}" for time, caption in captions)
    user = f"The person who filmed the video says about it: {user_caption}\n" if user_caption else ""
    text = prompts["describe"].strip().replace("{user_caption}", user).replace("{captions}", lines)
    return [{"role": "user", "content": text}]


def qa_messages(prompts: dict[str, str], kind: str, description: str) -> list:
    text = (
        prompts["qa_common"]
        .strip()
        .replace("{task}", prompts[f"qa_{kind}"].strip())
        .replace("{count}", str(PAIRS_PER_KIND))
        .replace("{description}", description)
    )
    return [{"role": "user", "content": text}]


# ----------------------------------------------------------------------------------------------- reading replies
def _plain(text: str) -> str:
    return _FENCE.sub("", _THINK.sub("", text).strip()).strip()


def parse_text(limit: int, what: str):
    """A parser for the client: the reply's text (``<think>`` blocks removed, whitespace collapsed), or why not."""

    def parse(text: str) -> tuple[str | None, str | None]:
        value = " ".join(_plain(text).split())
        if not value:
            return None, f"an empty {what}"
        return value[:limit], None

    return parse


def _first_json(text: str):
    """The first JSON list or object in ``text`` (the whole text, else from each ``[``/``{`` on), or None."""
    decoder = json.JSONDecoder()
    try:
        return json.loads(text)
    except ValueError:
        pass
    for match in re.finditer(r"[\[{]", text):
        try:
            return decoder.raw_decode(text, match.start())[0]
        except ValueError:
            continue
    return None


def _field(item: dict, *names: str) -> str | None:
    for name in names:
        value = item.get(name)
        if isinstance(value, str):
            return value.strip()
    return None


def parse_pairs(text: str) -> tuple[list[dict] | None, str | None]:
    """The QA items of a reply: ``[{"q", "a"[, "q2"]}]`` (fields None where missing), or why there are none."""
    value = _first_json(_plain(text))
    if isinstance(value, dict):  # {"pairs": [...]} or {"q": ..., "a": ...}
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if lists else [value]
    if not isinstance(value, list):
        return None, "no JSON list of question-answer pairs in the reply"
    items = [
        {
            "q": _field(item, "q", "question", "q1", "question1"),
            "a": _field(item, "a", "answer"),
            "q2": _field(item, "q2", "question2", "paraphrase"),
        }
        for item in value
        if isinstance(item, dict)
    ]
    if not any(item["q"] and item["a"] for item in items):
        return None, "the JSON holds no item with a question and an answer"
    return items, None


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def clean_pairs(kind: str, items: list[dict], seen: set[str]) -> tuple[list[dict], Counter]:
    """The ``{"q", "a"}`` records of one kind's items that pass the output checks, and what was dropped, by reason.

    ``seen`` (the video's questions so far, normalised) is updated: a question asked twice in one video is kept once.
    """
    kept, dropped = [], Counter()
    for item in items:
        questions = [item.get("q")] + ([item.get("q2")] if kind == "consistency" else [])
        answer = item.get("a") or ""
        for question in questions:
            question = question or ""
            q_words, a_words = _words(question), _words(answer)
            if not q_words or not a_words:
                dropped["empty"] += 1
            elif len(answer.split()) > MAX_ANSWER_WORDS:
                dropped["over-long"] += 1
            elif set(a_words) <= set(q_words):
                dropped["restates the question"] += 1
            elif " ".join(q_words) in seen:
                dropped["duplicate"] += 1
            else:
                seen.add(" ".join(q_words))
                kept.append({"q": question, "a": answer})
    return kept, dropped


# --------------------------------------------------------------------------------------------------- the run
@dataclass
class VideoOutcome:
    video_id: str
    file: str
    status: str = "done"  # done | skipped (not a usable video) | failed (a request failed)
    reason: str | None = None
    provenance: dict = field(default_factory=dict)
    pairs: dict[str, list[dict]] = field(default_factory=dict)  # kind -> kept records
    dropped: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)  # {"video", "step", "reason"}
    asked: Counter = field(default_factory=Counter)  # step -> requests answered in this run
    cached: Counter = field(default_factory=Counter)  # step -> answers read from the cache


class Generator:
    """The four steps for one video at a time (thread-safe: one instance serves all workers)."""

    def __init__(self, args, vlm: Asker, llm: Asker, prompts: dict[str, str], cache: Path, user_captions: dict):
        self.args, self.vlm, self.llm, self.prompts = args, vlm, llm, prompts
        self.cache, self.user_captions = cache, user_captions
        self._lock = threading.Lock()

    def _cached(self, path: Path):
        return read_json(path, expect=dict) if path.is_file() else None

    def keyframes(self, video: Path, folder: Path, out: VideoOutcome) -> list[dict] | None:
        done = self._cached(folder / "keyframes.json")
        if done is not None:
            out.cached["keyframes"] += 1
            return done["frames"]
        try:
            frames, total = extract_keyframes(video, self.args.keyframes, MAX_IMAGE_SIDE)
        except DECODE_ERRORS as exc:
            reason = str(exc) if isinstance(exc, VideoDecodeError) else f"does not decode: {exc}"
            out.status, out.reason = "skipped", " ".join(reason.split())[:300]
            return None
        listed = []
        for frame in frames:
            name = f"frame_{frame.index:06d}.jpg"
            write_bytes_atomically(folder / name, frame.jpeg)
            listed.append({"index": frame.index, "time": frame.time, "scene_score": frame.scene_score, "image": name})
        write_json_atomically(folder / "keyframes.json", {"num_frames": total, "frames": listed}, indent=1)
        out.asked["keyframes"] += 1
        return listed

    def ask(self, asker: Asker, messages: list, parse, path: Path, step: str, out: VideoOutcome) -> dict | None:
        """The cached answer of one request, else the server's (written to ``path``), else None (a failure)."""
        done = self._cached(path)
        if done is not None:
            out.cached[step] += 1
            return done
        result = asker.ask(messages, parse)
        if not result["ok"]:
            out.failures.append({"video": out.video_id, "step": step, "reason": result["reason"], "raw": result["raw"]})
            return None
        record = {"value": result["reply"], "raw": result["raw"], "model": result["model"]}
        write_json_atomically(path, record, indent=1)
        out.asked[step] += 1
        return record

    def run(self, video: Path) -> VideoOutcome:
        out = VideoOutcome(video_id_of(video.name), video.name)
        folder = self.cache / out.video_id
        folder.mkdir(parents=True, exist_ok=True)
        remove_leftover_temporaries(folder)
        frames = self.keyframes(video, folder, out)
        out.provenance = {"video_id": out.video_id, "file": video.name}
        if frames is None:
            return self._finish(out)
        out.provenance["frames"] = frames
        captions = []
        for frame in frames:
            messages = caption_messages(self.prompts, frame["time"], (folder / frame["image"]).read_bytes())
            path = folder / f"caption_{frame['index']:06d}.json"
            got = self.ask(self.vlm, messages, parse_text(MAX_CAPTION_CHARS, "caption"), path, "caption", out)
            if got is not None:
                frame.update(caption=got["value"], raw=got["raw"], model=got["model"])
                captions.append((frame["time"], got["value"]))
        if len(captions) < len(frames):
            return self._finish(out, "failed", "some frames have no caption")
        user_caption = self.user_captions.get(out.video_id)
        messages = describe_messages(self.prompts, captions, user_caption)
        parse = parse_text(MAX_DESCRIPTION_CHARS, "description")
        description = self.ask(self.llm, messages, parse, folder / "description.json", "description", out)
        if description is None:
            return self._finish(out, "failed", "no description")
        out.provenance["user_caption"] = user_caption
        out.provenance["description"] = {k: description[k] for k in ("value", "raw", "model")}
        seen: set[str] = set()
        out.provenance["qa"] = {}
        for kind in self.args.kinds:
            messages = qa_messages(self.prompts, kind, description["value"])
            got = self.ask(self.llm, messages, parse_pairs, folder / f"qa_{kind}.json", f"qa {kind}", out)
            if got is None:
                continue
            kept, dropped = clean_pairs(kind, got["value"], seen)
            out.pairs[kind] = kept
            out.dropped += dropped
            out.provenance["qa"][kind] = {"raw": got["raw"], "model": got["model"], "kept": kept, "dropped": dropped}
        if out.failures:
            return self._finish(out, "failed", "some question kinds failed")
        return self._finish(out)

    def _finish(self, out: VideoOutcome, status: str | None = None, reason: str | None = None) -> VideoOutcome:
        if status is not None:
            out.status, out.reason = status, reason
        out.provenance.update(status=out.status, reason=out.reason, failures=out.failures)
        return out


# ------------------------------------------------------------------------------------------------ the command
def parse_kinds(text: str) -> tuple[str, ...]:
    names = [k.strip() for k in text.split(",") if k.strip()]
    if names == ["all"]:
        return KINDS
    if names == ["original"]:
        return ORIGINAL_KINDS
    unknown = [k for k in names if k not in KINDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown kinds {unknown}; choose from {', '.join(KINDS)} (or all, original)")
    return tuple(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="video-chatgpt data generate",
        description="Instruction data (VideoInstruct JSON) from a folder of videos with any OpenAI-compatible VLM "
        "and LLM: keyframes, frame captions, a description, QA pairs. See docs/own-videos.md.",
    )
    p.add_argument("--video_dir", type=Path, required=True, help="folder of the videos (every non-hidden file)")
    p.add_argument("--output_json", type=Path, required=True, help="the VideoInstruct JSON to write")
    p.add_argument("--captions", type=Path, help='JSON {"<video id>": "your caption or transcript"} (optional)')
    p.add_argument("--vlm_model", required=True, help="the vision-language model captioning the keyframes")
    p.add_argument("--vlm_api_base", default=DEFAULT_API_BASE, help="its OpenAI-compatible /v1 endpoint")
    p.add_argument("--llm_model", help="the LLM writing descriptions and QA (default: --vlm_model)")
    p.add_argument("--llm_api_base", help="its /v1 endpoint (default: --vlm_api_base)")
    p.add_argument("--api_key_env", default="OPENAI_API_KEY", help="environment variable holding the key (both)")
    p.add_argument("--kinds", type=parse_kinds, default=KINDS, help=f"comma-separated: {','.join(KINDS)} (all)")
    p.add_argument("--keyframes", type=int, default=8, help="keyframes per video (scene changes, then uniform)")
    p.add_argument("--num_workers", type=int, default=4, help="videos processed at once (one request each)")
    p.add_argument(
        "--max_retries", type=int, default=5, help="retries per request (HTTP errors, timeouts, bad replies)"
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request attempt, in total")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0, help="sent with every request; also seeds the retry jitter")
    p.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry; doubles each time")
    p.add_argument("--max_backoff", type=float, default=60.0, help="longest wait between attempts")
    return p


def check_flags(args) -> None:
    for name, low in (("keyframes", 1), ("num_workers", 1), ("max_retries", 0)):
        if getattr(args, name) < low:
            raise UserError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    for name in ("timeout", "backoff", "max_backoff"):
        if not 0 <= getattr(args, name) < float("inf") or (name == "timeout" and args.timeout == 0):
            raise UserError(f"--{name} must be a number of seconds >= 0 (timeout > 0), got {getattr(args, name)}")
    if not 0 <= args.temperature < float("inf"):
        raise UserError(f"--temperature must be a number >= 0, got {args.temperature}")
    if not args.video_dir.is_dir():
        raise UserError(f"--video_dir {args.video_dir}: is not a folder; pass the folder that holds the videos")


def read_user_captions(path: Path | None) -> tuple[dict[str, str], str | None]:
    """``{video id: caption}`` of ``--captions`` (keys may be file names) and the file's sha256."""
    if path is None:
        return {}, None
    data = read_json(path, expect=dict)
    captions = {}
    for key, value in data.items():
        if not isinstance(value, str):
            raise UserError(f"--captions {path}: the value of {key!r} is {type(value).__name__}, expected text")
        captions[video_id_of(key)] = value.strip()
    return captions, hashlib.sha256(path.read_bytes()).hexdigest()


def list_videos(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file())
    return [folder / name for name in names]


def check_cache_settings(cache: Path, settings: dict) -> None:
    """Refuse a cache made with other settings (before anything is asked or written); write them to a new cache."""
    path = cache / "settings.json"
    if path.is_file():
        before = read_json(path, expect=dict)
        changed = [f"{k}: {before.get(k)!r}, now {settings[k]!r}" for k in settings if before.get(k) != settings[k]]
        if changed:
            shown = "; ".join(c if len(c) < 200 else c[:200] + "..." for c in changed[:3])
            raise UserError(
                f"{path}: the cache was made with other settings ({shown}); rerun with those, or delete the folder "
                f"{cache} or name another --output_json to start afresh"
            )
        return
    cache.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, settings, indent=1)


def summary_lines(outcomes: list[VideoOutcome], kinds: tuple[str, ...], output: Path, records: int) -> list[str]:
    status = Counter(o.status for o in outcomes)
    asked = sum((o.asked for o in outcomes), Counter())
    cached = sum((o.cached for o in outcomes), Counter())
    per_kind = Counter({kind: sum(len(o.pairs.get(kind, ())) for o in outcomes) for kind in kinds})
    dropped = sum((o.dropped for o in outcomes), Counter())
    lines = [
        f"videos: {len(outcomes)} ({status['done']} done, {status['skipped']} skipped, {status['failed']} failed)",
        f"frames captioned: {asked['caption'] + cached['caption']} ({asked['caption']} asked now, "
        f"{cached['caption']} from the cache)",
        f"QA pairs written: {records} to {output} (" + ", ".join(f"{k} {n}" for k, n in per_kind.items()) + ")",
        f"dropped: {sum(dropped.values())}"
        + (" (" + ", ".join(f"{k} {n}" for k, n in sorted(dropped.items())) + ")" if dropped else ""),
    ]
    for o in outcomes:
        if o.status == "skipped":
            lines.append(f"  skipped {o.file}: {o.reason}")
    failures = [f for o in outcomes for f in o.failures]
    if failures:
        lines.append(f"failures: {len(failures)} (a rerun asks them again)")
        lines += [f"  {f['video']} {f['step']}: {f['reason']}" for f in failures[:20]]
        if len(failures) > 20:
            lines.append(f"  ... and {len(failures) - 20} more (see the provenance file)")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``video-chatgpt data generate --video_dir DIR --output_json OUT.json --vlm_model M [...]``."""
    args = parse_args_or_status(build_parser(), argv)
    if isinstance(args, int):
        return args
    check_flags(args)
    args.llm_model = args.llm_model or args.vlm_model
    args.llm_api_base = args.llm_api_base or args.vlm_api_base
    hosts = [api_host(args.vlm_api_base, "--vlm_api_base"), api_host(args.llm_api_base, "--llm_api_base")]
    output = args.output_json
    cache = output.with_name(output.name + ".cache")
    provenance_path = output.with_name(output.name.split(".")[0] + ".provenance.jsonl")
    inputs = {"--video_dir": args.video_dir, "--captions": args.captions}
    for path, what in ((output, ""), (cache, " (its cache folder)"), (provenance_path, " (its provenance file)")):
        check_output(path, inputs, f"--output_json{what}")
    user_captions, captions_sha = read_user_captions(args.captions)
    videos = list_videos(args.video_dir)
    prompts = load_prompts()
    settings = {
        "version": CACHE_VERSION,
        **{name: getattr(args, name) for name in ("vlm_model", "llm_model", "temperature", "seed", "keyframes")},
        "max_image_side": MAX_IMAGE_SIDE,
        "pairs_per_kind": PAIRS_PER_KIND,
        "prompts_sha256": prompt_hashes(prompts),
        "captions_sha256": captions_sha,
    }
    check_cache_settings(cache, settings)
    key = key_from_environment(args.api_key_env, hosts, "video-chatgpt data generate")

    def asker(model: str, api_base: str, role: str) -> Asker:
        retry = {name: getattr(args, name) for name in ("timeout", "max_retries", "backoff", "max_backoff")}
        client = ClientSettings(model, api_base, args.temperature, args.seed, **retry)
        return Asker(client, key, jitter_seed=args.seed, role=role)

    vlm = asker(args.vlm_model, args.vlm_api_base, "VLM")
    llm = asker(args.llm_model, args.llm_api_base, "LLM")
    generator = Generator(args, vlm, llm, prompts, cache, user_captions)

    # Duplicate ids (v.mp4 and v.webm) would share one cache folder and one video_id: the later files are skipped.
    outcomes, todo, ids = [], [], set()
    for video in videos:
        vid = video_id_of(video.name)
        if vid in ids or not vid:
            outcomes.append(VideoOutcome(vid, video.name, "skipped", f"video id {vid!r} already taken by another file"))
        else:
            ids.add(vid)
            todo.append(video)
    bar = tqdm(total=len(todo), unit="video", desc="generate", dynamic_ncols=True)
    try:
        with ThreadPoolExecutor(max_workers=args.num_workers) as pool:
            futures = [pool.submit(generator.run, video) for video in todo]
            try:
                for future in as_completed(futures):
                    outcomes.append(future.result())
                    bar.update(1)
            except BaseException as exc:
                for f in futures:
                    f.cancel()
                if isinstance(exc, ServerRefused):
                    raise UserError(
                        f"{exc}; check --vlm_model/--llm_model, the API bases and the key in ${args.api_key_env} "
                        "(what was answered is cached)"
                    ) from None
                raise
    finally:
        bar.close()
        vlm.client.close()
        llm.client.close()
    outcomes.sort(key=lambda o: o.file)
    records = [
        {"video_id": o.video_id, **pair} for o in outcomes for kind in args.kinds for pair in o.pairs.get(kind, ())
    ]
    write_json_atomically(output, records, indent=1)
    header = {"settings": settings, "kinds": list(args.kinds), "vlm_api_base": args.vlm_api_base}
    header["llm_api_base"] = args.llm_api_base
    lines = [json.dumps(header)] + [
        json.dumps({"video_id": o.video_id, "file": o.file, **o.provenance, "status": o.status, "reason": o.reason})
        for o in outcomes
    ]
    write_text_atomically(provenance_path, "\n".join(lines) + "\n")
    print("\n".join(summary_lines(outcomes, args.kinds, output, len(records))))
    print(f"provenance: {provenance_path}; cache: {cache}")
    return 1 if any(o.failures for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "video-chatgpt data generate"))
