"""The training report: ``training_report.md`` and ``loss.png`` in a run folder.

Written at the end of training, and on demand (e.g. for a run that is still going or was killed)::

    video-chatgpt report ./Video-ChatGPT_7B-1.1_Checkpoints

It reads only files in the run folder:

* ``trainer_state.json``: the Trainer's log history (loss, learning rate, grad norm, and this project's
  tokens/s, samples/s, padding and peak GPU memory per ``--logging_steps``). The newest of the top-level file and the
  ``checkpoint-N/trainer_state.json`` files is used, so an unfinished or killed run is read from its checkpoints;
* ``run_info.json`` (written by ``train.py``): the exact command, versions, world size, trainable parameters by
  name, the data check's summary, and one entry per (possibly resumed) run segment with its wall time and peak
  memory.

Whatever is missing is reported as "not recorded"; a broken or missing file never raises, but a folder with no
trace of a run (none of those files, no ``checkpoint-N``) is refused with one line and nothing is written (a typo in
the path should not produce an empty report). The notes ``train.py`` records (flags without effect, the bf16 ->
fp32 fallback on a CPU) are listed under "Notes". Both files are written atomically. ``loss.png`` has two
panels sharing the step axis: the loss (each logged value, plus a centred moving average when there are many) with
the resume points marked, and the learning rate.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import statistics
import sys
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from video_chatgpt.args import command_parser, parse_args_or_status
from video_chatgpt.constants import TRAINER_STATE_FILE
from video_chatgpt.errors import UserError, run_main
from video_chatgpt.files import read_json, write_atomically, write_text_atomically

RUN_INFO_FILE = "run_info.json"  # written by train.py
REPORT_FILE = "training_report.md"
PLOT_FILE = "loss.png"
NOT_RECORDED = "not recorded"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_MAX_TABLE_ROWS = 25  # rows of the per-step table; longer runs are shown at evenly spaced steps


# ------------------------------------------------------------------------------------------------ reading a run
@dataclass
class LogPoint:
    """One logged training step (the last entry wins when a resume logged a step twice)."""

    step: int
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    epoch: float | None = None
    tokens_per_second: float | None = None
    samples_per_second: float | None = None
    padding_fraction: float | None = None  # share of the computed token positions that were padding
    padding_removed: float | None = None  # share of the padded batches' positions --packing did not compute
    peak_memory_gb: float | None = None


_LOGGED_FIELDS = tuple(f.name for f in fields(LogPoint) if f.name != "step")  # read from each log_history entry
_NAN_FIELDS = ("loss", "grad_norm")  # kept when NaN/inf: the report flags a diverged run


@dataclass
class Run:
    """What a run folder holds, read defensively. ``state_path``: the trainer_state.json that was used."""

    output_dir: Path
    state: dict | None = None
    state_path: Path | None = None
    from_checkpoint: bool = False
    run_info: dict | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def log_history(self) -> list[dict]:
        history = (self.state or {}).get("log_history")
        return [e for e in history if isinstance(e, dict)] if isinstance(history, list) else []

    @property
    def points(self) -> list[LogPoint]:
        by_step: dict[int, LogPoint] = {}
        for e in self.log_history:
            step = _number(e.get("step"))
            values = {name: _number(e.get(name), allow_nan=name in _NAN_FIELDS) for name in _LOGGED_FIELDS}
            if step is not None and values["loss"] is not None:
                by_step[int(step)] = LogPoint(step=int(step), **values)
        return [by_step[s] for s in sorted(by_step)]

    @property
    def eval_points(self) -> list[tuple[int, float]]:
        out = {}
        for e in self.log_history:
            step, loss = _number(e.get("step")), _number(e.get("eval_loss"), allow_nan=True)
            if step is not None and loss is not None:
                out[int(step)] = loss
        return sorted(out.items())

    @property
    def segments(self) -> list[dict]:
        runs = (self.run_info or {}).get("runs")
        return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []

    @property
    def resume_steps(self) -> list[tuple[int, str]]:
        """``(step, checkpoint name)`` of each resume recorded in run_info.json."""
        out = []
        for seg in self.segments:
            name = Path(str(seg.get("resumed_from") or "")).name
            m = _CHECKPOINT.match(name)
            if m:
                out.append((int(m.group(1)), name))
        return out


def _number(value, allow_nan: bool = False) -> float | None:
    """A finite float (or NaN/inf with ``allow_nan``) from a JSON value; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not allow_nan and not math.isfinite(value):
        return None
    return value


def _read_json(path: Path, problems: list[str]) -> dict | None:
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, UserError) as exc:
        problems.append(f"`{path.name}` could not be read ({type(exc).__name__}: {exc})")
        return None
    if not isinstance(data, dict):
        problems.append(f"`{path.name}` holds a JSON {type(data).__name__}, not an object")
        return None
    return data


def read_run(output_dir: str | Path) -> Run:
    """Read a run folder: the newest trainer state (top level or checkpoint) and run_info.json."""
    out = Path(output_dir)
    run = Run(out)
    run.run_info = _read_json(out / RUN_INFO_FILE, run.problems)
    top = out / TRAINER_STATE_FILE
    paths = [top] if top.is_file() else []
    if out.is_dir():
        paths += [d / TRAINER_STATE_FILE for d in out.iterdir() if _CHECKPOINT.match(d.name)]
    states = [(p, state) for p in paths if p.is_file() and (state := _read_json(p, run.problems)) is not None]

    def newest(item: tuple[Path, dict]) -> tuple[float, bool]:  # the highest global_step; the top-level file on a tie
        step = _number(item[1].get("global_step"))
        return (step if step is not None else -1, item[0] == top)

    if states:
        run.state_path, run.state = max(states, key=newest)
        run.from_checkpoint = run.state_path != top
    return run


# --------------------------------------------------------------------------------------------------- the plot
def moving_average(values: list[float], window: int) -> list[float]:
    """Centred moving average; the window shrinks at the ends; NaN/inf values are left out of the mean."""
    out = []
    half = window // 2
    for i in range(len(values)):
        part = [v for v in values[max(0, i - half) : i + half + 1] if math.isfinite(v)]
        out.append(sum(part) / len(part) if part else float("nan"))
    return out


def smoothing_window(n: int) -> int:
    """No smoothing under 20 points; else an odd window of about n/20 (at least 5) points."""
    return 0 if n < 20 else max(5, n // 20) | 1


def plot_curves(run: Run, path: str | Path) -> Path | None:
    """Write the loss / learning-rate figure to ``path`` (Agg, no pyplot state); None when nothing was logged."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = [p for p in run.points if p.loss is not None]
    if not points:
        return None
    steps = [p.step for p in points]
    losses = [p.loss for p in points]
    fig = Figure(figsize=(9, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    window = smoothing_window(len(points))
    if window:
        ax_loss.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss (each logged step)")
        smooth = moving_average(losses, window)
        ax_loss.plot(steps, smooth, color="tab:blue", linewidth=2.2, label=f"moving average ({window} points)")
    else:
        ax_loss.plot(steps, losses, "o-", color="tab:blue", linewidth=1.8, markersize=5, label="loss")
    if run.eval_points:
        ax_loss.plot(*zip(*run.eval_points), "s--", color="tab:orange", label="eval loss")
    for step, name in run.resume_steps:
        for ax in (ax_loss, ax_lr):
            ax.axvline(step, color="0.45", linestyle="--", linewidth=1)
        ax_loss.annotate(
            f"resumed from {name}",
            (step, 1),
            xycoords=("data", "axes fraction"),
            xytext=(4, -14),
            textcoords="offset points",
            fontsize=8,
            color="0.3",
        )
    final = next((v for v in reversed(losses) if math.isfinite(v)), None)
    where = f"step {steps[-1]}" + (f" of {run.state.get('max_steps')}" if run.state.get("max_steps") else "")
    title = f"{run.output_dir.resolve().name}: training loss"
    title += f" (last {final:.4g} at {where})" if final is not None else ""
    ax_loss.set_title(title + (", read from checkpoints" if run.from_checkpoint else ""), fontsize=11)
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(loc="best", fontsize=9)

    lr = [(p.step, p.learning_rate) for p in points if p.learning_rate is not None]
    if lr:
        marker = "o" if len(lr) < 20 else None
        ax_lr.plot(*zip(*lr), "-", color="tab:green", linewidth=1.8, marker=marker, markersize=4)
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    else:
        ax_lr.text(0.5, 0.5, f"learning rate {NOT_RECORDED}", transform=ax_lr.transAxes, ha="center", va="center")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    if len(steps) < 12:  # few steps: integer ticks at the logged steps
        ax_lr.set_xticks(steps)
    fig.tight_layout()
    # Whole or not at all: a kill while saving leaves the previous loss.png, not half of a new one.
    return write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))


# ------------------------------------------------------------------------------------------------- formatting
def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return NOT_RECORDED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):  # shapes: no thousands separators
        return "(" + ", ".join(str(v) for v in value) + ")" if len(value) <= 8 else f"{len(value)} values"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return NOT_RECORDED
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min" if hours else f"{m} min {s:02d} s"


def _rate(values: list[float]) -> str:
    """Median over the logged intervals (the first interval of a segment includes start-up, so not the mean)."""
    if not values:
        return NOT_RECORDED

    def show(x: float) -> str:
        return _fmt(round(x) if x >= 100 else x)

    spread = f" (range {show(min(values))} to {show(max(values))})" if min(values) != max(values) else ""
    return f"{show(statistics.median(values))}: median over {len(values)} logged intervals{spread}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _evenly(items: list, k: int) -> list:
    if len(items) <= k:
        return items
    idx = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in idx]


def _health(run: Run) -> list[str]:
    """Plain observations about the curve: start vs end, non-finite values, a zero learning rate mid-run."""
    points = [p for p in run.points if p.loss is not None]
    if not points:
        return []
    out = []
    finite = [p for p in points if math.isfinite(p.loss)]
    bad = [p.step for p in points if not math.isfinite(p.loss)]
    if bad:
        out.append(f"**non-finite loss** at {len(bad)} logged steps (first: step {bad[0]}): the run diverged there")
    bad_grad = [p.step for p in points if p.grad_norm is not None and not math.isfinite(p.grad_norm)]
    if bad_grad:
        out.append(f"**non-finite gradient norm** at {len(bad_grad)} logged steps (first: step {bad_grad[0]})")
    if len(finite) >= 2:
        k = max(1, len(finite) // 10)  # compare the first and last tenth (one point each for short runs)
        first = statistics.fmean(p.loss for p in finite[:k])
        last = statistics.fmean(p.loss for p in finite[-k:])
        what = "first and last logged values" if k == 1 else f"means of the first and last {k} logged values"
        change = (last - first) / abs(first) * 100 if first else float("nan")
        out.append(f"loss {first:.4g} -> {last:.4g} ({change:+.1f}%; {what})")
    lr_zero = [p.step for p in points[:-1] if p.learning_rate == 0]
    if lr_zero:
        out.append(
            f"learning rate 0 at step(s) {', '.join(map(str, lr_zero[:5]))} before the last logged step: nothing "
            "was learnt there; check the schedule (a resume keeps the checkpoint's scheduler even when "
            "--max_steps / --num_train_epochs changed)"
        )
    return out


def format_report(run: Run, plot: Path | None, plot_error: str | None = None) -> str:
    """The markdown text of the report: the header, then one section per function below, in this order."""
    info = run.run_info or {}
    params = _trainable_parameters(info)
    sections = [
        ("Summary", _summary_section(run, info, params)),
        ("Loss and learning rate", _curves_section(run, plot, plot_error)),
        ("Run segments", _segments_section(run.segments)),
        ("Notes", _notes_section(info)),
        ("Trainable parameters", _parameters_section(params)),
        ("Data", _data_section(info.get("data"))),
        ("Command and versions", _command_section(info)),
    ]
    lines = _header(run)
    for title, body in sections:
        lines += ["", f"## {title}", "", *body]
    return "\n".join(lines) + "\n"


def _header(run: Run) -> list[str]:
    """Title, folder, the time of writing, which trainer state was read, and any file that could not be read."""
    lines = [f"# Training report: {run.output_dir.resolve().name}", ""]
    lines.append(
        f"Run folder: `{run.output_dir.resolve()}`; report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC."
    )
    if run.state_path is None:
        lines.append(
            f"Trainer state: {NOT_RECORDED} (no `{TRAINER_STATE_FILE}` at the top level or in a `checkpoint-N`)."
        )
    elif run.from_checkpoint:
        rel = run.state_path.relative_to(run.output_dir)
        lines.append(
            f"Trainer state: `{rel}`, **a run read from its checkpoints** (the run has not finished, was "
            "stopped, or its final state was not saved); steps after that checkpoint are not shown."
        )
    else:
        lines.append(f"Trainer state: `{TRAINER_STATE_FILE}` (the run finished).")
    return lines + [f"Warning: {p}" for p in run.problems]


def _trainable_parameters(info: dict) -> list[dict]:
    """run_info.json's ``trainable_parameters`` entries that are objects (``{"name", "count"}``)."""
    return [p for p in info.get("trainable_parameters") or [] if isinstance(p, dict)]


def _numbers(entries: list[dict], key: str) -> list[float]:
    """The finite numbers at ``key`` of run_info.json's entries (segments, trainable parameters)."""
    return [v for v in (_number(e.get(key)) for e in entries) if v is not None]


def _logged(points: list[LogPoint], name: str) -> list[float]:
    """The logged values of one ``LogPoint`` field, where recorded."""
    return [v for v in (getattr(p, name) for p in points) if v is not None]


def _summary_section(run: Run, info: dict, params: list[dict]) -> list[str]:
    """One table: steps, loss, throughput, wall time, peak memory, trainables, world size, shapes, LoRA, batch."""
    state = run.state or {}
    points = run.points
    segments = run.segments
    step, max_steps = _number(state.get("global_step")), _number(state.get("max_steps"))
    steps = NOT_RECORDED if step is None else _fmt(step) + (f" of {_fmt(max_steps)}" if max_steps else "")
    if step is not None and _number(state.get("epoch")) is not None:
        steps += f" (epoch {_fmt(state['epoch'], 3)})"
    last = next((p for p in reversed(points) if p.loss is not None), None)
    wall = _numbers(segments, "wall_time_s")
    wall_s = sum(wall) if wall else None
    wall_text = _duration(wall_s)
    if wall_s is not None and len(segments) > 1:
        wall_text += f", summed over {len(segments)} run segments (listed below)"
    gpu = _logged(points, "peak_memory_gb") + _numbers(segments, "peak_gpu_memory_gb")
    rss = _numbers(segments, "peak_rss_gb")
    rows = [
        ["steps", steps],
        ["last logged loss", NOT_RECORDED if last is None else f"{_fmt(last.loss, 5)} (step {last.step})"],
        [
            "train loss (Trainer's mean over the last segment)",
            _fmt(_number(segments[-1].get("train_loss")), 5) if segments else NOT_RECORDED,
        ],
        ["tokens/s", _rate(_logged(points, "tokens_per_second"))],
        ["samples/s", _rate(_logged(points, "samples_per_second"))],
        *_padding_rows(points),
        ["wall time", wall_text],
        ["peak GPU memory", f"{max(gpu):.2f} GB (torch max allocated)" if gpu else NOT_RECORDED],
        ["peak host memory (RSS)", f"{max(rss):.2f} GB" if rss else NOT_RECORDED],
        [
            "trainable parameters",
            f"{_fmt(int(sum(_numbers(params, 'count'))))} in {len(params)} tensors" if params else NOT_RECORDED,
        ],
        ["world size (processes)", _fmt(info.get("world_size"))],
        ["feature shape (video tokens, width)", _fmt(info.get("feature_shape"))],
    ]
    lora = [p for p in params if ".lora_" in str(p.get("name", ""))]
    if lora:  # --lora_enable: the adapters apart from the projector, with peft's settings
        adapter = _lora_settings(run.output_dir)
        leaves = sorted({str(p["name"]).split(".lora_")[0].rsplit(".", 1)[-1] for p in lora})
        count = _fmt(int(sum(_numbers(lora, "count"))))
        rows.append(["LoRA adapters", f"{count} parameters in {len(lora)} tensors on {', '.join(leaves)}{adapter}"])
    if state.get("train_batch_size") is not None:
        rows.append(["batch size per device", _fmt(state.get("train_batch_size"))])
    return _table(["", "value"], rows)


def _padding_rows(points: list[LogPoint]) -> list[list[str]]:
    """The padding of the run (mean over the logged intervals): what the computed batches held, and what --packing
    removed from the padded batches (docs/packing.md)."""

    def mean(values: list[float]) -> str:
        return f"{100 * statistics.fmean(values):.1f}%" if values else NOT_RECORDED

    computed, removed = _logged(points, "padding_fraction"), _logged(points, "padding_removed")
    return [
        ["padding (computed positions)", mean(computed)],
        ["padding removed by --packing", mean(removed) + (" of the padded batches' positions" if removed else "")],
    ]


def _lora_settings(folder: Path) -> str:
    """``" (r 64, alpha 16, dropout 0.05)"`` from the run's adapter_config.json, or "" when it is not there yet."""
    try:
        cfg = read_json(folder / "adapter_config.json", expect=dict)
    except (OSError, UserError):
        return ""
    return f" (r {cfg.get('r')}, alpha {cfg.get('lora_alpha')}, dropout {cfg.get('lora_dropout')})"


def _curves_section(run: Run, plot: Path | None, plot_error: str | None) -> list[str]:
    """The plot (or why it is missing), observations about the curve, and a table of (at most 25) logged steps."""
    points = run.points
    lines = []
    if plot is not None:
        lines += [f"![loss and learning rate over steps]({plot.name})", ""]
    elif plot_error:
        lines += [f"`{PLOT_FILE}` not written: {plot_error}", ""]
    if not points:
        lines.append(f"Loss: {NOT_RECORDED} (nothing logged yet; `--logging_steps` sets how often the loss is logged).")
        return lines
    lines += [f"- {h}" for h in _health(run)] + [""]
    shown = _evenly(points, _MAX_TABLE_ROWS)
    if len(shown) < len(points):
        lines.append(f"{len(shown)} of {len(points)} logged steps, evenly spaced:")
        lines.append("")
    return lines + _table(
        ["step", "epoch", "loss", "learning rate", "grad norm", "tokens/s", "samples/s"],
        [
            [
                str(p.step),
                _fmt(p.epoch, 3),
                _fmt(p.loss, 5),
                _fmt(p.learning_rate, 3),
                _fmt(p.grad_norm, 3),
                _fmt(p.tokens_per_second),
                _fmt(p.samples_per_second),
            ]
            for p in shown
        ],
    )


def _segments_section(segments: list[dict]) -> list[str]:
    """One row per run segment (a start or a resume): where it resumed from, the step reached, time, loss, memory."""
    if not segments:
        return [f"Wall time per segment: {NOT_RECORDED} (`{RUN_INFO_FILE}` lists a segment when a run ends)."]
    rows = [
        [
            str(k),
            f"`{Path(str(s['resumed_from'])).name}`" if s.get("resumed_from") else "start",
            _fmt(s.get("global_step")),
            _duration(_number(s.get("wall_time_s"))),
            _fmt(_number(s.get("train_loss")), 5),
            _fmt(_number(s.get("peak_gpu_memory_gb"))),
            _fmt(_number(s.get("peak_rss_gb"))),
        ]
        for k, s in enumerate(segments, 1)
    ]
    return _table(["#", "resumed from", "reached step", "wall time", "train loss", "peak GPU GB", "peak RSS GB"], rows)


def _notes_section(info: dict) -> list[str]:
    """train.py's notes: flags accepted but without effect, the bf16 -> fp32 fallback on a CPU, ..."""
    notes = info.get("notes")
    if not isinstance(notes, list):
        return [f"Notes: {NOT_RECORDED}." if "notes" not in info else f"Notes: not readable ({_fmt(notes)})."]
    return [f"- {n}" for n in notes] if notes else ["None: every flag had its effect, in the dtype asked for."]


def _parameters_section(params: list[dict]) -> list[str]:
    """The trainable tensors by name, with their count and share of the total."""
    if not params:
        return [f"Trainable parameters: {NOT_RECORDED}."]
    total = sum(_numbers(params, "count"))
    rows = [
        [
            f"`{p.get('name')}`",
            _fmt(p.get("count")),
            f"{100 * p['count'] / total:.1f}%" if total and _number(p.get("count")) is not None else "",
        ]
        for p in params
    ]
    rows.append(["**total**", f"**{_fmt(int(total))}**", "100%"])
    return _table(["name", "count", "share"], rows)


def _data_section(data) -> list[str]:
    """The data check's summary: the usual keys in words, any other key as it is."""
    if not isinstance(data, dict) or not data:
        return [
            f"Data summary: {NOT_RECORDED} (the data check was skipped with --skip_data_check, or did not "
            "return a summary)."
        ]
    rows = []
    named = {
        "data_path": "training JSON",
        "video_folder": "feature folder",
        "num_records": "records",
        "num_videos": "distinct videos",
        "num_feature_files": "feature files in the folder",
        "feature_shape": "feature shape",
        "feature_dtype": "feature dtype",
        "num_video_tokens": "video tokens per sample",
    }
    for key, label in named.items():
        if key in data:
            rows.append([label, _fmt(data[key])])
    lengths = data.get("token_lengths")
    if isinstance(lengths, dict):
        parts = [f"{k} {_fmt(lengths[k])}" for k in ("min", "median", "p95", "p99", "max") if k in lengths]
        rows.append(["token lengths", ", ".join(parts) or NOT_RECORDED])
        if "num_truncated" in lengths:
            limit = lengths.get("model_max_length")
            rows.append([f"truncated samples (> model_max_length {limit})", _fmt(lengths["num_truncated"])])
    counts = data.get("counts")
    if isinstance(counts, dict):
        rows.append(["findings", ", ".join(f"{k}: {_fmt(v)}" for k, v in counts.items()) or "none"])
    skip = set(named) | {"token_lengths", "counts", "problems", "timings", "notes", "fatal_kinds"}
    for key, value in data.items():
        if key not in skip and not isinstance(value, dict):
            rows.append([key.replace("_", " "), _fmt(value)])
    lines = _table(["", "value"], rows)
    notes = data.get("notes")
    if isinstance(notes, list) and notes:
        lines += [""] + [f"- note: {n}" for n in notes]
    return lines


def _command(info: dict) -> str | None:
    argv, command = info.get("argv"), info.get("command")
    if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
        program = command.split()[0] if isinstance(command, str) and command.split() else "train"
        return shlex.join([program, *argv])
    return command if isinstance(command, str) else None


def _command_section(info: dict) -> list[str]:
    """The command that started the run, and the versions of torch, transformers and Python."""
    command = _command(info)
    lines = ["```", command, "```"] if command else [f"Command: {NOT_RECORDED}."]
    versions = info.get("versions")
    if isinstance(versions, dict) and versions:
        return lines + ["", ", ".join(f"{k} {v}" for k, v in versions.items())]
    return lines + ["", f"Versions: {NOT_RECORDED}."]


# ------------------------------------------------------------------------------------------------- entry points
def write_report(output_dir: str | Path) -> list[Path]:
    """Write ``training_report.md`` (and ``loss.png`` when a loss was logged) in ``output_dir``; returns the paths.
    ``UserError`` (nothing written) when ``output_dir`` is not a folder or holds no trace of a run."""
    out = Path(output_dir)
    if not out.exists():
        raise UserError(f"{out}: no such folder; pass the run's --output_dir")
    if not out.is_dir():
        raise UserError(f"{out}: is a file, not a run folder; pass the run's --output_dir")
    run = read_run(out)
    checkpoints = any(_CHECKPOINT.match(d.name) and d.is_dir() for d in out.iterdir())
    if run.state_path is None and run.run_info is None and not run.problems and not checkpoints:
        raise UserError(
            f"{out}: holds no training run (no {TRAINER_STATE_FILE}, no checkpoint-N/ folder, no {RUN_INFO_FILE}); pass the "
            f"--output_dir of a run that has started"
        )
    plot, plot_error = None, None
    try:
        plot = plot_curves(run, out / PLOT_FILE)
    except (ImportError, OSError, ValueError, RuntimeError) as exc:  # the report must not fail a finished run
        plot_error = f"{type(exc).__name__}: {exc}"
    report = write_text_atomically(out / REPORT_FILE, format_report(run, plot, plot_error))
    return [report] + ([plot] if plot is not None else [])


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "report",
        f"Write {REPORT_FILE} and {PLOT_FILE} for a training run folder (finished, resumed or running).",
    )
    p.add_argument("output_dir", help="the run's --output_dir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_args_or_status(build_parser(), argv)
    if isinstance(args, int):  # --help (0) or bad flags (2)
        return args
    for path in write_report(args.output_dir):  # UserError / OSError: one line, exit 1 (run_main)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "report"))
