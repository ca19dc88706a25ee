"""One set of model flags: every command that loads a trained model offers the same flags (names, spellings,
defaults, choices, help), and they reach ``load_engine`` whole. Builds the parsers only: no model is loaded."""

from __future__ import annotations

import argparse
import inspect

import pytest
import torch

from video_chatgpt.eval import benchmark
from video_chatgpt.inference import chat, demo, predict
from video_chatgpt.inference.engine import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, load_engine
from video_chatgpt.inference.flags import MODEL_FLAGS, add_model_flags, engine_kwargs, model_flags_argv
from video_chatgpt.serve import app as serve_app

COMMANDS = {"chat": chat, "predict": predict, "demo": demo, "benchmark": benchmark}
# serve has the model flags too; its generation settings come with each request, not from flags.
MODEL_FLAG_COMMANDS = {**COMMANDS, "serve": serve_app}
# What each command's own generation defaults are (the demo's 512 is the original demo's slider default).
MAX_NEW_TOKENS = {"chat": DEFAULT_MAX_NEW_TOKENS, "predict": DEFAULT_MAX_NEW_TOKENS, "benchmark": 1024, "demo": 512}


def describe(action: argparse.Action) -> dict:
    return {
        "flags": tuple(action.option_strings),
        "default": action.default,
        "type": action.type,
        "choices": tuple(action.choices) if action.choices is not None else None,
        "required": action.required,
        "nargs": action.nargs,
        "help": action.help,
    }


def model_actions(parser: argparse.ArgumentParser) -> dict[str, dict]:
    return {a.dest: describe(a) for a in parser._actions if a.dest in MODEL_FLAGS}


def reference() -> dict[str, dict]:
    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    return model_actions(parser)


@pytest.mark.parametrize("name", sorted(MODEL_FLAG_COMMANDS))
def test_every_command_has_the_same_model_flags(name):
    want = reference()
    got = model_actions(MODEL_FLAG_COMMANDS[name].build_parser())
    assert set(got) == set(want), f"{name} lacks {sorted(set(want) - set(got))}"
    for dest, spec in want.items():
        assert spec["help"], f"{spec['flags'][0]} has no help"
        assert got[dest] == spec, f"{name} {spec['flags'][0]}: {got[dest]} != {spec}"


def test_original_spellings_and_documented_defaults():
    args = chat.build_parser().parse_args(
        ["--model-name", "m", "--projection_path", "p", "--conv-mode", "vicuna_v1_1", "--video_path", "v.mp4"]
    )
    assert (args.model_name, args.projection_path, args.conv_mode) == ("m", "p", "vicuna_v1_1")
    args = chat.build_parser().parse_args(["--model_name", "m", "--conv_mode", "vicuna_v1_1", "--video_path", "v"])
    assert (args.model_name, args.conv_mode) == ("m", "vicuna_v1_1")
    defaults = {dest: spec["default"] for dest, spec in reference().items()}
    assert defaults == {
        "model_name": None,
        "projection_path": None,
        "lora_path": None,
        "vision_tower": None,
        "num_frames": None,
        "conv_mode": "video-chatgpt_v1",  # the original eval CLIs' --conv-mode default
        "prompt_ids": "ours",
        "device": None,
        "dtype": None,
    }


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_generation_flags_and_their_defaults(name):
    actions = {a.dest: a for a in COMMANDS[name].build_parser()._actions}
    assert actions["temperature"].type is float and actions["temperature"].default == DEFAULT_TEMPERATURE == 0.2
    assert actions["max_new_tokens"].type is int and actions["max_new_tokens"].default == MAX_NEW_TOKENS[name]


def test_flags_reach_load_engine_whole():
    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    argv = ["--model-name", "m", "--projection_path", "p.bin", "--lora_path", "run", "--vision_tower", "clip"]
    argv += ["--num_frames", "8", "--conv-mode", "vicuna_v1_1", "--prompt_ids", "original", "--device", "cpu"]
    argv += ["--dtype", "bfloat16"]
    args = parser.parse_args(argv)
    kwargs = engine_kwargs(args)
    assert set(kwargs) == set(inspect.signature(load_engine).parameters)  # no load_engine setting without a flag
    assert kwargs["dtype"] is torch.bfloat16 and kwargs["num_frames"] == 8 and kwargs["prompt_ids"] == "original"
    # benchmark hands the flags on to predict: the command line it rebuilds parses to the same settings
    again = parser.parse_args(model_flags_argv(args))
    assert engine_kwargs(again) == kwargs
    bench = benchmark.build_parser().parse_args(["--benchmark_dir", "b", "--output_dir", "o", *argv])
    s = benchmark.BenchmarkSet("generic", "general", ("correctness",), (bench.benchmark_dir / "g.json",), None)
    pred = predict.build_parser().parse_args(benchmark.predict_argv(bench, s))
    assert engine_kwargs(pred) == kwargs
