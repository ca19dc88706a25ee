"""Training across processes: DeepSpeed's communication set-up, ZeRO-3's gathered tensors, and the replica check.

Under ZeRO-3 each process holds a shard of every parameter (an empty local tensor; the full shape is ``ds_shape``),
so code that edits whole tensors (new embedding rows, a projector loaded from a file) gathers them first and keeps
rank 0's edits. Without DeepSpeed each helper does nothing. ``deepspeed`` is imported only where it is used.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch.distributed as dist
from transformers.integrations import is_deepspeed_zero3_enabled

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


def gathered_embeddings(model, training_args: TrainingArguments):
    """Context: the full input/output embedding tables on every process (ZeRO-3), edits from rank 0 kept."""
    if not (training_args.deepspeed and is_deepspeed_zero3_enabled()):
        return contextlib.nullcontext()
    import deepspeed

    tables = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    return deepspeed.zero.GatheredParameters(tables, modifier_rank=0)


def gathered_projector(model):
    """Context: the projector's full tensors on every process when ZeRO-3 partitioned them (the LLaVA-v1 base
    builds it inside ``from_pretrained``'s ``zero.Init``), edits from rank 0 kept; else nothing to do."""
    params = [p for p in model.model.mm_projector.parameters() if hasattr(p, "ds_shape")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def fit_embedding_rows(
    model, training_args: TrainingArguments, vocabulary_size: int, new_rows_from: int | None
) -> None:
    """``model.fit_vocabulary`` for any base, also under ZeRO-3, where each process holds a shard of the tables (an
    empty local shape): ``resize_token_embeddings`` gathers by itself, and the mean rows are set on the gathered
    tables (rank 0's edits kept)."""
    weight = model.get_input_embeddings().weight
    if not hasattr(weight, "ds_shape"):
        model.fit_vocabulary(vocabulary_size, new_rows_from=new_rows_from)
        return
    if weight.ds_shape[0] < vocabulary_size:
        model.resize_token_embeddings(vocabulary_size, mean_resizing=False)
    with gathered_embeddings(model, training_args):
        model.fit_vocabulary(vocabulary_size, new_rows_from=new_rows_from)


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
