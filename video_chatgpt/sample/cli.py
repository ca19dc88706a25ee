"""``video-chatgpt sample models|world|awkward --out DIR``: make the tiny offline sample.

video-chatgpt sample models --out runs/sample/models      # tiny LLaVA-like LM + tiny CLIP tower
video-chatgpt sample world --out runs/sample/world        # synthetic videos, VideoInstruct JSON, test QA
video-chatgpt sample awkward --out runs/sample/awkward    # short / odd-size / corrupt / empty / non-video files
video-chatgpt sample benchmark --out runs/sample/world    # benchmark question files on the held-out videos
video-chatgpt sample judge-server --port 8765             # rule-based OpenAI-compatible TEST judge (not an LLM)
video-chatgpt sample lmms-task --world W --out DIR        # an lmms-eval task (local YAML + data) on W's test videos
"""

from __future__ import annotations

from video_chatgpt.args import command_parser


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] in ("benchmark", "judge-server"):  # the offline benchmark and its rule-based judge
        from video_chatgpt.sample.benchmark import main as benchmark_main

        return benchmark_main(argv)
    if argv and argv[0] == "lmms-task":  # an lmms-eval task folder on the sample world
        from video_chatgpt.sample.lmms_task import main as lmms_task_main

        return lmms_task_main(argv)
    parser = command_parser("sample", __doc__)
    parser.add_argument("what", choices=["models", "world", "awkward"])
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--safetensors", action="store_true", help="models: write safetensors shards, not .bin")
    parser.add_argument("--num_train", type=int, default=48, help="world: training videos")
    parser.add_argument("--num_test", type=int, default=16, help="world: held-out videos")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    if args.what == "models":
        from video_chatgpt.sample.models import make_sample_models

        paths = make_sample_models(args.out, safetensors=args.safetensors)
    elif args.what == "world":
        from video_chatgpt.sample.world import make_sample_world

        paths = make_sample_world(args.out, num_train=args.num_train, num_test=args.num_test, seed=args.seed)
    else:
        from video_chatgpt.sample.videos import make_awkward_videos

        paths = make_awkward_videos(args.out, seed=args.seed)
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0
