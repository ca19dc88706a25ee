"""What a newcomer meets first in ``train``: a schedule that cannot work is named, QLoRA on a CPU is refused before
anything is read, and a missing flag is one line."""

from __future__ import annotations

import pytest
import torch

from video_chatgpt.cli import main
from video_chatgpt.train.arguments import TrainingArguments, schedule_notes


def _args(tmp_path, **kw) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to=[], **kw)


def test_an_epoch_of_one_step_and_logging_beyond_the_run_are_named(tmp_path):
    # 8 samples, batch 4, accumulation 2: one optimizer step per epoch; 3 epochs; the document's logging_steps 100.
    args = _args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, num_train_epochs=3,
                 logging_steps=100)  # fmt: skip
    notes = schedule_notes(8, args)
    assert len(notes) == 2
    assert notes[0].startswith("an epoch is 1 optimizer step(s) (8 samples / batch 4 / accumulation 2)")
    assert notes[1].startswith("--logging_steps 100 is more than the run's 3 optimizer steps")


def test_a_workable_schedule_says_nothing(tmp_path):
    args = _args(tmp_path, per_device_train_batch_size=4, num_train_epochs=3, logging_steps=10)
    assert schedule_notes(400, args) == []  # 100 steps per epoch, 300 in all, a loss every 10


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_qlora_on_a_cpu_is_refused_before_the_model_or_data_is_read(tmp_path, capsys):
    missing = tmp_path / "nothing_here"
    argv = ["train", "--model_name_or_path", str(missing), "--data_path", str(missing / "d.json"),
            "--features_dir", str(missing), "--output_dir", str(tmp_path / "run"), "--lora_enable", "True",
            "--bits", "4"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--bits 4" in err and "nothing_here" not in err, err  # said before the (missing) base or data is looked at
    assert not (tmp_path / "run").exists()
