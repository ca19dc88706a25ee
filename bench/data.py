"""Instruction data at the real sizes: the converter and the data check on 100K records and 13K feature files.

Builds in a temporary folder (removed at the end unless ``--keep``):

* a VideoInstruct-style JSON of ``--items`` QA pairs over ``--videos`` + ``--missing`` video ids (questions of 6-20
  words, answers of 10-150: about the real file's 60 MB);
* ``--videos`` feature files of the real shape (356, 1024) float16 as the original's pickles. ``--dense`` of them
  hold random data; the others are *sparse* files with the same bytes a pickle of a zero array has (header, a hole
  of 729,088 bytes, trailer), so 13K real-size files take ~100 MB of disk instead of 9.5 GB. They look the same to
  the header check (same size, same header, same seek); a full load reads the hole as zeros from memory, so the
  ``--deep`` time is a lower bound (no disk reads; on a network file system expect it to be I/O-bound);
* the tiny sample tokenizer (Mistral's v1 SentencePiece vocabulary in LLaMA's format, 32000 pieces) for the token lengths.

Then it times, in this process: the conversion without and with ``--clip_feature_path``, the original's list
filter (on a slice, extrapolated), the default check (headers + a sample) of the unfiltered JSON (which reports the
missing videos), the check with token lengths of the filtered JSON, and ``--deep``.

    python bench/data.py                          # 100K items, 13K files (about 1-2 minutes on 2 cores)
    python bench/data.py --items 20000 --videos 3000 --dense 100   # quicker
    python bench/data.py --json runs/bench_data.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when the package is not installed

from video_chatgpt.bases import open_base  # noqa: E402
from video_chatgpt.data.check import check_training_data  # noqa: E402
from video_chatgpt.data.convert import main as convert_main  # noqa: E402
from video_chatgpt.features.store import load_features  # noqa: E402

WORDS = (
    "the a man woman person dog ball video shows walking running jumping red blue green park street room kitchen "
    "table camera scene then after before while slowly quickly holds picks throws opens closes people group two "
    "three begins ends background front left right water field game player team music dance cooking bike car"
).split()
QUESTIONS = ("What", "Who", "Where", "How", "Describe", "Why", "When", "Which", "Can you tell")


def make_items(num_items: int, video_ids: list[str], rng: np.random.Generator) -> list[dict]:
    words = np.array(WORDS)
    q_len = rng.integers(6, 21, num_items)
    a_len = rng.integers(10, 151, num_items)
    vids = rng.integers(0, len(video_ids), num_items)
    items = []
    for k in range(num_items):
        q = QUESTIONS[k % len(QUESTIONS)] + " " + " ".join(rng.choice(words, q_len[k])) + "?"
        a = " ".join(rng.choice(words, a_len[k])).capitalize() + "."
        items.append({"video_id": video_ids[vids[k]], "q": q, "a": a})
    return items


def write_sparse_features(folder: Path, names: list[str], shape: tuple[int, int]) -> int:
    """Files equal to ``pickle.dumps(np.zeros(shape, float16))``, with the data as a hole. Returns the file size."""
    ones = np.ones(shape, np.float16)
    blob = pickle.dumps(ones, protocol=4)
    payload = ones.tobytes()
    start = blob.index(payload)  # the header cannot contain this 729 KB run
    header, trailer = blob[:start], blob[start + len(payload) :]
    for name in names:
        with open(folder / name, "wb") as f:
            f.write(header)
            f.seek(len(payload), os.SEEK_CUR)
            f.write(trailer)
    return len(blob)


class Clock:
    """Wall and CPU seconds (all threads of this process) of each timed call, for the summary table."""

    def __init__(self):
        self.rows: dict[str, tuple[float, float]] = {}

    def __call__(self, name: str, fn, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        self.rows[name] = (time.perf_counter() - wall, time.process_time() - cpu)
        return out


def quiet_convert(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = convert_main(argv)
    return rc, buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=100_000, help="QA pairs (the real JSON: 100K)")
    p.add_argument("--videos", type=int, default=13_000, help="feature files (the real set: ~13K)")
    p.add_argument("--missing", type=int, default=300, help="extra video ids in the JSON without a feature file")
    p.add_argument("--dense", type=int, default=300, help="feature files with real random data (the rest sparse)")
    p.add_argument("--rows", type=int, default=356, help="feature rows (100 frames + 256 patches)")
    p.add_argument("--width", type=int, default=1024, help="feature width (ViT-L/14)")
    p.add_argument("--num_workers", type=int, default=None, help="threads for the check (default: CPU count)")
    p.add_argument("--workdir", default=None, help="where to build the data (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the generated data")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_data_"))
    work.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    try:
        rng = np.random.default_rng(0)
        ids = [f"v_{k:011d}" for k in range(args.videos + args.missing)]
        items = make_items(args.items, ids, rng)
        src = work / "VideoInstruct_Dataset.json"
        src.write_text(json.dumps(items))
        print(f"generated {args.items} items over {len(ids)} video ids ({src.stat().st_size / 1e6:.0f} MB)")

        feats = work / "clip_features"
        feats.mkdir()
        shape = (args.rows, args.width)
        start = time.perf_counter()
        dense = ids[: args.dense]
        for k, vid in enumerate(dense):
            arr = np.random.default_rng(k).standard_normal(shape).astype(np.float16)
            (feats / f"{vid}.pkl").write_bytes(pickle.dumps(arr, protocol=4))
        size = write_sparse_features(feats, [f"{v}.pkl" for v in ids[args.dense : args.videos]], shape)
        disk = sum(e.stat().st_blocks * 512 for e in os.scandir(feats))
        print(
            f"wrote {args.videos} feature files of {shape} float16 ({args.dense} dense, the rest sparse; "
            f"{size} bytes each, {disk / 1e6:.0f} MB on disk) in {time.perf_counter() - start:.1f} s"
        )
        assert not load_features(feats / f"{ids[args.videos - 1]}.pkl", expected_shape=shape).any()  # zeros

        from video_chatgpt.sample.models import write_llava_tokenizer

        tok = work / "tokenizer"
        write_llava_tokenizer(tok)

        out_all, out_kept = work / "train_all.json", work / "train_kept.json"
        rc, _ = clock("convert", quiet_convert, ["--input_json_file", str(src), "--output_json_file", str(out_all)])
        base = ["--input_json_file", str(src), "--output_json_file", str(out_kept), "--clip_feature_path", str(feats)]
        rc2, text = clock("convert --clip_feature_path", quiet_convert, base)
        assert rc == rc2 == 0
        print(text.strip())

        # The original's filter: `video_id in list_of_names` per item, timed on a slice and scaled.
        names = [n.split(".")[0] for n in os.listdir(feats)]
        part = items[: max(1, len(items) // 50)]
        clock("original's list filter (scaled)", lambda: [it for it in part if it["video_id"] in names])
        wall, cpu = clock.rows["original's list filter (scaled)"]
        clock.rows["original's list filter (scaled)"] = (wall * len(items) / len(part), cpu * len(items) / len(part))

        workers = {"num_workers": args.num_workers}
        r_all = clock("check (headers + sample), unfiltered", check_training_data, out_all, feats, **workers)
        print(f"\n--- data check of the unfiltered JSON (phases, wall s: {r_all.timings}):")
        print(r_all.format(max_listed=3))

        r_tok = clock(
            "check + token lengths, filtered",
            check_training_data, out_kept, feats, base=open_base(tok), model_max_length=2048, **workers,
        )  # fmt: skip
        print(f"\n--- data check of the filtered JSON with token lengths (phases, wall s: {r_tok.timings}):")
        print(r_tok.format(max_listed=3))

        r_deep = clock("check --deep, filtered", check_training_data, out_kept, feats, deep=True, **workers)
        print(f"\n--- data check --deep (phases, wall s: {r_deep.timings}): {r_deep.num_files_loaded} files loaded")
        assert not r_tok.fatal and not r_deep.fatal and r_all.counts.get("missing_feature", 0) > 0

        print(
            f"\nsummary: {args.items} items, {args.videos} feature files, {os.cpu_count()} CPUs, warm page cache; "
            "CPU = all threads of this process"
        )
        width = max(map(len, clock.rows))
        print(f"  {'':<{width}}  {'wall s':>8}  {'CPU s':>8}")
        for name, (wall, cpu) in clock.rows.items():
            print(f"  {name:<{width}}  {wall:8.2f}  {cpu:8.2f}")
        results = {
            "items": args.items,
            "feature_files": args.videos,
            "cpu_count": os.cpu_count(),
            "seconds": {name: {"wall": round(w, 3), "cpu": round(c, 3)} for name, (w, c) in clock.rows.items()},
            "phases_wall_s": {"headers": r_all.timings, "tokens": r_tok.timings, "deep": r_deep.timings},
        }
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"data kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
