"""``video-chatgpt sample lmms-task``: an lmms-eval task on the sample world, local files only (no hub access).

    video-chatgpt sample lmms-task --world runs/quickstart/world --out runs/quickstart/lmms_task
    # then, with a server on the trained model (see docs/lmms-eval.md):
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OPENAI_API_KEY=unused python -m lmms_eval --model openai \
        --model_args model_version=video-chatgpt,base_url=http://127.0.0.1:8000/v1,pass_video_url=True \
        --tasks vcg_sample_colour --include_path runs/quickstart/lmms_task --batch_size 1 --output_path lmms_out

The task ``vcg_sample_colour``: for each held-out video of the world (``test_qa.json``), the colour question with the
colours as lettered options; a reply is scored by ``chosen_option`` in the task's ``utils.py`` (a letter, or the one
option it names: the sample model answers "The object is green."). The folder ``--out`` holds:

* ``vcg_sample_colour.yaml``: the task, its data file named by absolute path (lmms-eval resolves relative paths
  against its working folder, not the YAML's);
* ``utils.py``: the prompt, the messages (the video as an absolute path, sent as a ``video_url`` part) and the score;
* ``vcg_sample_colour.jsonl``: the questions, ``{"question_id", "video", "prompt", "options", "answer"}``;
* ``predict_qa.json``: the same prompts in ``video-chatgpt predict --task general``'s format (``video_name``, ``Q``,
  ``A``, ``question_id``), so the project's own ``predict`` answers exactly what lmms-eval asks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from video_chatgpt.args import command_parser
from video_chatgpt.errors import UserError, run_main
from video_chatgpt.files import read_json, staged_folder
from video_chatgpt.sample.videos import COLOURS

TASK = "vcg_sample_colour"
LETTERS = "ABCDEFGH"
MAX_NEW_TOKENS = 24
UTILS = Path(__file__).resolve().parent / "lmms_eval_task" / "utils.py"

YAML = """\
# lmms-eval task on the video-chatgpt sample world; written by `video-chatgpt sample lmms-task`.
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_messages: !function utils.doc_to_messages
doc_to_target: !function utils.doc_to_target
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.0
"""


def prompt(question: str, options: list[str]) -> str:
    """The question, then one lettered option a line ("A. red")."""
    return question + "\n" + "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, options))


def task_records(world: Path) -> list[dict]:
    """One multiple-choice record per held-out question of ``world`` (its ``test_qa.json``), videos by absolute path."""
    questions = read_json(world / "test_qa.json", expect=list)
    options = list(COLOURS)
    records = []
    for k, qa in enumerate(questions):
        missing = [key for key in ("video_name", "Q", "answer") if not isinstance(qa, dict) or key not in qa]
        if missing:
            raise UserError(
                f"{world / 'test_qa.json'}: record {k}: no {', '.join(missing)} (write it with sample world)"
            )
        video = (world / "videos" / "test" / f"{qa['video_name']}.mp4").resolve()
        if not video.is_file():
            raise UserError(f"{world / 'test_qa.json'}: record {k}: no video {video}")
        if qa["answer"] not in options:
            raise UserError(f"{world / 'test_qa.json'}: record {k}: answer {qa['answer']!r} is none of {options}")
        records.append(
            {
                "question_id": f"{qa['video_name']}_colour",
                "video": str(video),
                "prompt": prompt(qa["Q"], options),
                "options": options,
                "answer": LETTERS[options.index(qa["answer"])],
            }
        )
    return records


def write_lmms_task(world: str | Path, out: str | Path) -> dict[str, Path]:
    """Write the task folder ``out`` (see the module docstring) for the sample world ``world``; returns its paths."""
    world, out = Path(world).resolve(), Path(out).resolve()
    records = task_records(world)
    data = out / f"{TASK}.jsonl"
    with staged_folder(out) as tmp:
        (tmp / data.name).write_text("".join(json.dumps(r) + "\n" for r in records))
        (tmp / f"{TASK}.yaml").write_text(
            YAML.format(task=TASK, data=json.dumps(str(data)), max_new_tokens=MAX_NEW_TOKENS)
        )
        shutil.copyfile(UTILS, tmp / "utils.py")
        predict_qa = [
            {"video_name": Path(r["video"]).stem, "Q": r["prompt"], "A": r["answer"], "question_id": r["question_id"]}
            for r in records
        ]
        (tmp / "predict_qa.json").write_text(json.dumps(predict_qa, indent=1))
    return {
        "folder": out,
        "yaml": out / f"{TASK}.yaml",
        "utils": out / "utils.py",
        "data": data,
        "predict_qa": out / "predict_qa.json",
        "videos": world / "videos" / "test",
    }


def _main(argv: list[str]) -> int:
    parser = command_parser("sample lmms-task", __doc__)
    parser.add_argument("--world", required=True, help="a sample world folder (video-chatgpt sample world)")
    parser.add_argument("--out", required=True, help="the task folder to write (lmms-eval's --include_path)")
    args = parser.parse_args(argv)
    paths = write_lmms_task(args.world, args.out)
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if argv[:1] == ["lmms-task"]:
        argv = argv[1:]
    return run_main(_main, argv, "video-chatgpt sample lmms-task")
