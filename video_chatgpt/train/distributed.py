"""Training across processes: DeepSpeed's communication set-up and the replica check.

Under ZeRO-3 each process holds a shard of every parameter (an empty local tensor; the full shape is ``ds_shape``):
code that edits whole tensors (new embedding rows, a projector loaded from a file) gathers them first with
``model.loading.gathered``. ``deepspeed`` is imported only where it is used.
"""

from __future__ import annotations

import hashlib

import torch.distributed as dist

from video_chatgpt.train.arguments import TrainingArguments


def init_deepspeed_comm(training_args: TrainingArguments) -> None:
    """Set up ``deepspeed.comm`` on the process group that is already there, before the model is built.

    ZeRO-3's ``deepspeed.zero.Init`` (run inside ``from_pretrained``) reads the world size from ``deepspeed.comm``.
    accelerate sets that up itself only on GPUs; on the CPU (``use_cpu``) it is still unset at that point, so
    zero.Init counted 1 process and rejected the batch sizes ("train_batch_size ... 4 != 2 * 1 * 1").
    """
    if not training_args.deepspeed or not dist.is_available() or not dist.is_initialized():
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend=dist.get_backend())


def replica_checksums(model, training_args: TrainingArguments) -> list[str] | None:
    """One sha256 of the trainable tensors per process (all equal when the replicas stayed in sync), or None.

    None with one process, and where parameters are partitioned across processes (ZeRO-3, FSDP), so that each
    process holds only a shard. Every process must call this (it gathers).
    """
    if training_args.world_size <= 1 or not dist.is_available() or not dist.is_initialized():
        return None
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if training_args.fsdp or any(hasattr(p, "ds_id") for _, p in params):
        return None
    digest = hashlib.sha256()
    for name, p in params:
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    gathered: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, digest.hexdigest())
    return gathered
