"""The one projector-file reader (``model.loading.load_projector``): the files it accepts and the files it refuses,
the same for inference (the whole table copied, as the original's loader) and for ``--pretrain_mm_mlp_adapter``
(only the trained rows, as the original's training)."""

from __future__ import annotations

import pytest
import torch

from video_chatgpt.bases import open_base
from video_chatgpt.constants import EMBED_TOKENS_KEY
from video_chatgpt.data.tokenizer import load_video_tokenizer
from video_chatgpt.errors import UserError
from video_chatgpt.model.loading import load_model, load_projector


@pytest.fixture(scope="module")
def loaded(tiny_llava):
    """A fresh-model factory on the tiny document's base, the video token ids, and a trained-looking projector file
    (random projector and rows, every row differing from the base's)."""
    base = open_base(tiny_llava)
    _, video_ids, num_new = load_video_tokenizer(base.folder, use_start_end=True)

    def fresh():
        torch.manual_seed(0)
        return load_model(base, video_ids, num_new, mm_use_vid_start_end=True, video_token_len=8)

    model = fresh()
    g = torch.Generator().manual_seed(1)
    weight, bias = model.model.mm_projector.weight, model.model.mm_projector.bias
    table = model.get_input_embeddings().weight
    trained = {
        "model.mm_projector.weight": torch.randn(weight.shape, generator=g),
        "model.mm_projector.bias": torch.randn(bias.shape, generator=g),
        EMBED_TOKENS_KEY: torch.randn(table.shape, generator=g),
    }
    return fresh, [video_ids.start, video_ids.end], trained


def _cases(trained: dict, rows: list[int]) -> dict[str, tuple[dict, str | None]]:
    """name -> (file contents, None when accepted, else words of the one-line refusal)."""
    w, b, e = trained["model.mm_projector.weight"], trained["model.mm_projector.bias"], trained[EMBED_TOKENS_KEY]
    return {
        # Ours and the released video_chatgpt-7B.bin: model.mm_projector.* and the whole (V, H) table.
        "ours / the released layout": ({"model.mm_projector.weight": w, "model.mm_projector.bias": b,
                                        EMBED_TOKENS_KEY: e}, None),
        # The original trainer's key filter under DeepSpeed: a "module." prefix; extra keys are ignored.
        "DeepSpeed prefix": ({"module.model.mm_projector.weight": w, "module.model.mm_projector.bias": b,
                              EMBED_TOKENS_KEY: e, "model.layers.0.extra": torch.zeros(1)}, None),
        # Only the trained rows (k x H), as LLaVA's stage-1 adapters can carry them.
        "k trained rows": ({"model.mm_projector.weight": w, "model.mm_projector.bias": b,
                            EMBED_TOKENS_KEY: e[rows]}, None),
        "projector only": ({"model.mm_projector.weight": w, "model.mm_projector.bias": b}, None),
        "wrong prefix": ({"mm_proj.weight": w, "mm_proj.bias": b}, "do not match this model's 'linear' projector"),
        "an mlp2x_gelu projector": ({"model.mm_projector.0.weight": w, "model.mm_projector.0.bias": b,
                                     "model.mm_projector.2.weight": w, "model.mm_projector.2.bias": b},
                                    "do not match this model's 'linear' projector"),
        "projector of another width": ({"model.mm_projector.weight": w[:, :-1], "model.mm_projector.bias": b},
                                       "model.mm_projector.weight has shape"),
        "table of another vocabulary": ({"model.mm_projector.weight": w, "model.mm_projector.bias": b,
                                         EMBED_TOKENS_KEY: e[:-5]}, "rows; expected the model's"),
        "table of another width": ({"model.mm_projector.weight": w, "model.mm_projector.bias": b,
                                    EMBED_TOKENS_KEY: e[:, :-1]}, "wide, the model's embedding"),
        "not a dict of tensors": ([w, b], "not a projector file"),
    }  # fmt: skip


@pytest.mark.parametrize("whole_table", [True, False], ids=["inference", "pretrain_mm_mlp_adapter"])
def test_the_projector_reader_accepts_and_refuses_the_same_files_in_both_uses(loaded, whole_table):
    fresh, rows, trained = loaded
    for name, (state, refusal) in _cases(trained, rows).items():
        model = fresh()
        before = model.get_input_embeddings().weight.detach().clone()
        if refusal is not None:
            with pytest.raises(UserError, match=refusal):
                load_projector(model, state, f"file<{name}>", rows, whole_table=whole_table)
            continue
        load_projector(model, state, f"file<{name}>", rows, whole_table=whole_table)
        assert torch.equal(model.model.mm_projector.weight.detach(), trained["model.mm_projector.weight"]), name
        table = model.get_input_embeddings().weight.detach()
        if EMBED_TOKENS_KEY not in state:
            assert torch.equal(table, before), name  # nothing to take: the base's rows stay
            continue
        # The trained rows always come from the file; the others from the file only when it is whole and asked for.
        assert torch.equal(table[rows], trained[EMBED_TOKENS_KEY][rows]), name
        others = [i for i in range(table.shape[0]) if i not in rows]
        whole = state[EMBED_TOKENS_KEY].shape[0] == table.shape[0]
        source = trained[EMBED_TOKENS_KEY] if (whole_table and whole) else before
        assert torch.equal(table[others], source[others]), name


def test_trainable_rows_follow_the_file(loaded):
    """With the start/end rows being trained (a separate fp32 parameter), loading a file sets them too."""
    fresh, rows, trained = loaded
    model = fresh()
    model.train_token_rows(rows)
    load_projector(model, trained, "file", rows)
    assert torch.equal(model.model.video_token_embeds.detach(), trained[EMBED_TOKENS_KEY][sorted(rows)])
