"""The whole pipeline on the bundled sample world, offline, on a CPU: ``make quickstart``.

    python -m video_chatgpt.quickstart --workdir runs/quickstart      # or: video-chatgpt quickstart
    python -m video_chatgpt.quickstart --base qwen2 --workdir runs/quickstart-qwen2   # another base, two stages

Steps (each documented command runs as the user's document writes it, with sample paths):

1. sample models: a tiny LLaVA-7B-Lightening-v1-1-like base (``--base qwen2``: a tiny Qwen2-style chat model) and a
   tiny CLIP tower (``video_chatgpt.sample``); the base is taught the sample's language without any video, as
   LLaVA is a trained LM that reads a span of visual tokens: in place of each video, a span of video-token length
   holding the caption's word embeddings among noise (``pretrain_language``);
2. sample world: synthetic videos (a coloured shape moving), VideoInstruct-format JSON, held-out questions;
3. ``python scripts/convert_instruction_json_to_training_format.py --input_json_file ... --output_json_file ...``;
4. ``python scripts/save_spatio_temporal_clip_features.py --video_dir_path ... --clip_feat_path ...``;
5. ``python video_chatgpt/train/train_mem.py`` with the document's flags (paths, learning rate, logging and saving
   changed for the tiny model, see ``TRAIN_OVERRIDES``): only the projector and ``<vid_start>``/``<vid_end>`` train;
6. evaluation on held-out videos: the colour question, answered by choosing the most likely of the four colour
   answers (features computed on the fly from the video, as ``video-chatgpt chat`` does, once for both models),
   for the trained model, the untrained one (the base's projector, where training starts) and chance.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from video_chatgpt.args import command_parser
from video_chatgpt.errors import run_main

REPO = Path(__file__).resolve().parents[1]

# The document's training flags, verbatim, except paths (filled in below).
DOCUMENT_TRAIN_FLAGS = (
    "--version v1 --tune_mm_mlp_adapter True --mm_use_vid_start_end --bf16 True --num_train_epochs 3 "
    "--per_device_train_batch_size 4 --per_device_eval_batch_size 4 --gradient_accumulation_steps 1 "
    "--evaluation_strategy no --save_strategy steps --save_steps 3000 --save_total_limit 3 --learning_rate 2e-5 "
    "--weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine --logging_steps 100 --tf32 True "
    "--model_max_length 2048 --gradient_checkpointing True --lazy_preprocess True"
).split()
# What the tiny sample changes, and why: 2e-5 is the rate for a 7B model whose projector starts from LLaVA's trained
# image projector and sees 100K videos; the tiny model's projector starts random and has 3 epochs of 256 samples
# (192 steps) to learn (1e-3 is too slow there: ~40% held-out accuracy; 1e-2 reaches 100%). Logging and saving
# every few steps show the loss curve and leave checkpoints of a run this short. The epochs stay the document's 3.
TRAIN_OVERRIDES = {
    "--learning_rate": "1e-2",
    "--logging_steps": "10",
    "--save_steps": "100",
}


class Step:
    """Prints a numbered step with its wall time."""

    def __init__(self) -> None:
        self.n = 0
        self.start = time.perf_counter()

    def __call__(self, title: str) -> None:
        self.n += 1
        print(f"\n[{self.n}] {title}   (t = {time.perf_counter() - self.start:.0f} s)", flush=True)


def run(cmd: list[str]) -> None:
    """Run a documented command as a user would, from the repository root; stop the quickstart if it fails."""
    shown = " ".join(str(c) for c in cmd)
    print(f"$ {shown}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env)
    if result.returncode != 0:
        raise SystemExit(f"quickstart: command failed with exit status {result.returncode}: {shown}")


def train_flags(base: Path, data: Path, features: Path, out: Path) -> list[str]:
    flags = list(DOCUMENT_TRAIN_FLAGS)
    for key, value in TRAIN_OVERRIDES.items():
        flags[flags.index(key) + 1] = value
    paths = ["--model_name_or_path", base, "--data_path", data, "--video_folder", features, "--output_dir", out]
    return [str(x) for x in paths] + flags


def evaluate(engine, test_qa: list[dict], features: dict) -> dict:
    """Held-out colour accuracy: pick the most likely of the candidate answers given the video's features."""
    correct, shown = 0, []
    for qa in test_qa:
        video = features[qa["video_name"]]
        scores = engine.score_answers(qa["Q"], video, qa["choices"])
        chosen = qa["choices"][max(range(len(scores)), key=scores.__getitem__)]
        correct += chosen == qa["A"]
        if len(shown) < 3:
            shown.append(
                (qa["video_name"], qa["A"], chosen, engine.answer(qa["Q"], video, temperature=0, max_new_tokens=16))
            )
    return {"accuracy": correct / len(test_qa), "correct": correct, "examples": shown}


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("quickstart", __doc__)
    parser.add_argument("--workdir", default="runs/quickstart", help="where every stage writes")
    parser.add_argument("--num_train", type=int, default=64, help="training videos (4 questions each)")
    parser.add_argument("--num_test", type=int, default=24, help="held-out videos")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--base",
        choices=("llava", "qwen2"),
        default="llava",
        help="llava: the document's recipe (default); qwen2: a tiny Qwen2-style chat model with its "
        "own chat template, trained in two stages (--stage pretrain, then --stage finetune)",
    )
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    step = Step()

    from video_chatgpt.constants import DEFAULT_NUM_FRAMES
    from video_chatgpt.features.encoder import video_tokens
    from video_chatgpt.features.towers import resolve_tower
    from video_chatgpt.sample.models import make_sample_models, pretrain_language
    from video_chatgpt.sample.world import language_corpus, make_sample_world

    step("sample world: synthetic videos with known answers, VideoInstruct JSON, held-out questions")
    world = make_sample_world(work / "world", num_train=args.num_train, num_test=args.num_test, seed=args.seed)
    print(
        f"{args.num_train} training videos in {world['videos_train']}, {args.num_test} held-out in {world['videos_test']}"
    )

    base_name = "LLaVA-7B-Lightening-v1-1-like" if args.base == "llava" else "Qwen2-style chat"
    step(f"sample models: tiny {base_name} base + tiny CLIP tower; base taught the language (no video)")
    models = make_sample_models(work / "models")
    conversations, captions = language_corpus(seed=args.seed + 100)
    span = video_tokens(resolve_tower(models["vision_tower"]), DEFAULT_NUM_FRAMES)  # the video span the base reads
    if args.base == "qwen2":  # another base: a tiny chat LM with its own BPE tokenizer and <|im_start|> template
        from video_chatgpt.sample.models import SAMPLE_CHAT_SPEC, make_tiny_chat_lm

        base = make_tiny_chat_lm(work / "models" / "Qwen2-tiny-chat", "qwen2", SAMPLE_CHAT_SPEC)
    else:
        base = models["llava"]
    # The same 300 steps for both bases: the chat base's 512-row vocabulary makes its steps cheaper than LLaVA's
    # 32003-row one (its pipeline takes about as long as the llava one although it trains twice), and it reaches a
    # loss of ~0.2 on the answers (from 6.3), enough for both training stages to reach 24/24.
    losses = pretrain_language(base, conversations, captions, seed=args.seed, num_video_tokens=span)
    print(
        f"base language model {base}: loss {losses[0]:.2f} -> {sum(losses[-20:]) / 20:.3f} over {len(losses)} "
        f"steps (captions' words in {span}-token spans; no video seen)"
    )

    step("convert the instruction JSON (the document's command)")
    train_json = work / "video_chatgpt_training.json"
    convert = [py, "scripts/convert_instruction_json_to_training_format.py"]
    run([*convert, "--input_json_file", world["instructions"], "--output_json_file", train_json])

    step("spatio-temporal CLIP features (the document's command, with the tiny tower)")
    features = work / "clip_features"
    run(
        [
            py,
            "scripts/save_spatio_temporal_clip_features.py",
            "--video_dir_path",
            world["videos_train"],
            "--clip_feat_path",
            features,
            "--vision_tower",
            models["vision_tower"],
        ]
    )

    step("train (the document's single-GPU command; paths and learning rate for the tiny model)")
    out = work / "Video-ChatGPT_7B-1.1_Checkpoints"
    train = [py, "video_chatgpt/train/train_mem.py"]
    if args.base == "qwen2":
        # Stage 1: the projector alone, plain "<video> caption" template (the records' first answers as captions);
        # stage 2: the instruction data with the chat template, from the stage-1 projector.
        stage1, out = work / "Qwen2-stage1", work / "Qwen2-stage2"
        other = ["--mm_projector_type", "mlp2x_gelu", "--vision_tower", str(models["vision_tower"])]
        run([*train, *train_flags(base, train_json, features, stage1), *other, "--stage", "pretrain"])
        finetune = ["--stage", "finetune", "--pretrain_mm_mlp_adapter", str(stage1 / "mm_projector.bin")]
        run([*train, *train_flags(base, train_json, features, out), *other, *finetune])
    else:
        run([*train, *train_flags(base, train_json, features, out)])

    step("evaluate on held-out videos (colour question, 4 choices)")
    from video_chatgpt.inference.engine import load_engine

    test_qa = json.loads(Path(world["test_qa"]).read_text())
    # The first row: where training starts (the base's projector) or, for a two-stage base, after stage 1.
    first_row = "untrained (base projector)" if args.base == "llava" else "stage 1 only (alignment)"
    untrained_engine = load_engine(
        base if args.base == "llava" else stage1, None, device="cpu", vision_tower=str(models["vision_tower"])
    )
    trained_engine = load_engine(out, None, device="cpu", vision_tower=str(models["vision_tower"]))
    # One feature computation per video serves both models (same tower, same frames; checked against the run).
    features = {
        qa["video_name"]: trained_engine.video_features(Path(world["videos_test"]) / f"{qa['video_name']}.mp4")
        for qa in test_qa
    }
    untrained = evaluate(untrained_engine, test_qa, features)
    trained = evaluate(trained_engine, test_qa, features)
    # Control: the trained model asked about another held-out video (a fixed random permutation of the features).
    # If the answers come from the video, this falls to chance (a permutation keeps the colour in ~1/4 of the pairs).
    names = sorted(features)
    shuffled_names = random.Random(args.seed).sample(names, len(names))
    shuffled = evaluate(trained_engine, test_qa, {a: features[b] for a, b in zip(names, shuffled_names)})
    chance = 1 / len(test_qa[0]["choices"])
    n = len(test_qa)
    print(f"\nheld-out colour accuracy over {n} videos:")
    print(f"  chance                      {chance:6.1%}")
    print(f"  {first_row:<26}  {untrained['accuracy']:6.1%}  ({untrained['correct']}/{n})")
    print(f"  trained (mm_projector.bin)  {trained['accuracy']:6.1%}  ({trained['correct']}/{n})")
    print(f"  trained, videos shuffled    {shuffled['accuracy']:6.1%}  ({shuffled['correct']}/{n})")
    print("\nexamples (trained, greedy answer):")
    for video, truth, chosen, answer in trained["examples"]:
        print(f"  {video}: truth {truth!r}; chosen {chosen!r}; generated {answer!r}")
    summary = {
        "chance": chance,
        "untrained": untrained["accuracy"],
        "trained": trained["accuracy"],
        "trained_shuffled": shuffled["accuracy"],
        "num_test": len(test_qa),
        "wall_time_s": round(time.perf_counter() - step.start, 1),
    }
    (work / "quickstart_result.json").write_text(json.dumps(summary, indent=2))
    print(f"\nresult: {work / 'quickstart_result.json'}; training report: {out / 'training_report.md'}")
    print(
        f"chat with it: video-chatgpt chat --model_name_or_path {out} --video_path {world['videos_test']}/<video>.mp4 "
        f'--vision_tower {models["vision_tower"]} --question "What colour is the moving object in the video?"'
    )
    print(
        f"web demo (then open http://127.0.0.1:7860): video-chatgpt demo --model_name_or_path {out} "
        f"--vision_tower {models['vision_tower']} --examples {world['videos_test']}"
    )
    print(
        f"API server (OpenAI-compatible, docs/serve.md): video-chatgpt serve --model_name_or_path {out} "
        f"--vision_tower {models['vision_tower']} --allowed_local_media_path {world['videos_test']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "quickstart"))
