"""``python -m torch.distributed.run ... tests/helpers/fsdp_probe.py <train flags>``: train as ``video-chatgpt train``
does, and write what each training step saw to ``$FSDP_PROBE.<rank>.json``: the class of the model the Trainer
steps, the classes of its modules whose name says FSDP, and whether the Trainer has FSDP enabled. The FSDP-on-CPU
test (tests/train/test_deepspeed.py) reads them."""

from __future__ import annotations

import json
import os
import sys

from video_chatgpt.train.train import train
from video_chatgpt.train.trainer import VideoChatGPTTrainer


def main() -> None:
    seen = []
    step = VideoChatGPTTrainer.training_step

    def recording_step(self, model, *args, **kwargs):
        fsdp = sorted({type(m).__name__ for m in model.modules() if "FSDP" in type(m).__name__.upper()})
        fsdp += sorted({type(m).__name__ for m in model.modules() if "FullySharded" in type(m).__name__})
        seen.append({"model": type(model).__name__, "fsdp_modules": fsdp, "fsdp_enabled": self.is_fsdp_enabled})
        return step(self, model, *args, **kwargs)

    VideoChatGPTTrainer.training_step = recording_step  # this process only: a probe for the test
    train(sys.argv[1:])
    with open(f"{os.environ['FSDP_PROBE']}.{os.environ.get('RANK', '0')}.json", "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main()
