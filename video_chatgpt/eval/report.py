"""``results.md``: the results of an evaluation folder as a table beside the original's published numbers (pure)."""

from __future__ import annotations

from video_chatgpt.constants import TEST_JUDGES
from video_chatgpt.eval.protocol import CRITERIA, PUBLISHED_QA, PUBLISHED_VCGBENCH, QA

NOT_COMPARABLE = "(test judge, not comparable)"


def num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(ci, digits: int = 2) -> str:
    return "-" if ci is None else f"{ci[0]:.{digits}f} - {ci[1]:.{digits}f}"


def published_cell(value, judge_model: str, digits: int = 2) -> str:
    """A published number for a table row: marked as not comparable when a test judge scored ours."""
    text = num(value, digits)
    return f"{text} {NOT_COMPARABLE}" if judge_model in TEST_JUDGES and value is not None else text


def summary_lines(results: dict) -> list[str]:
    """One line per criterion for the terminal (the tables, intervals and failures are in results.md)."""
    lines = []
    for name, s in results["criteria"].items():
        accuracy = f"accuracy {num(s['accuracy'], 1)}%, " if CRITERIA[name].kind == QA else ""
        lines.append(
            f"{CRITERIA[name].title}: {accuracy}score {num(s['mean'])} (int() {num(s['mean_int'])}), "
            f"{s['judged']}/{s['total']} judged, {s['failed']} failed"
        )
    return lines


def render_markdown(results: dict) -> str:
    judge = results["judge"]
    lines = [
        "# Evaluation results",
        "",
        f"Judge `{judge['model']}`"
        + (
            f" (the server reported {', '.join(f'`{m}`' for m in judge['reported_models'])})"
            if judge.get("reported_models")
            else ""
        )
        + f" at `{judge['api_host']}`, temperature {judge['temperature']:g}, seed {judge['seed']}; "
        f"prompt set sha256 `{results['prompts']['sha256'][:16]}...`.",
        "",
        "*ours* is the mean of the judge's scores as given; *int()* is the original evaluators' mean of `int(score)` "
        "(4.8 counts as 4), the one the published numbers use. Failed records (no valid reply after the retries) are "
        "counted, not averaged; they are listed in `results.json` and a rerun retries them. Published numbers were "
        "judged by gpt-3.5-turbo in 2023: another judge gives other numbers.",
        "",
    ]
    vcg = {name: s for name, s in results["criteria"].items() if CRITERIA[name].kind != QA}
    if vcg:
        lines += [
            "| criterion | ours | 95% CI | int() | published | judged | failed | total |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, s in vcg.items():
            lines.append(
                f"| {CRITERIA[name].title} | {num(s['mean'])} | {_ci(s['ci95'])} | {num(s['mean_int'])} | "
                f"{published_cell(PUBLISHED_VCGBENCH.get(name), judge['model'])} | {s['judged']} | {s['failed']} | {s['total']} |"
            )
        lines.append("")
    qa = {name: s for name, s in results["criteria"].items() if CRITERIA[name].kind == QA}
    for s in qa.values():
        dataset = s.get("dataset")
        published = PUBLISHED_QA.get(dataset, (None, None))
        lines += [
            f"Zero-shot QA{f' ({dataset})' if dataset else ''}:",
            "",
            "| | ours | 95% CI | int() | published | judged | failed | total |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| accuracy (%) | {num(s['accuracy'], 1)} | {_ci(s['accuracy_ci95'], 1)} | - | "
            f"{published_cell(published[0], judge['model'], 1)} | {s['judged']} | {s['failed']} | {s['total']} |",
            f"| score | {num(s['mean'])} | {_ci(s['ci95'])} | {num(s['mean_int'])} | "
            f"{published_cell(published[1], judge['model'], 1)} | "
            f"{s['judged']} | {s['failed']} | {s['total']} |",
            "",
        ]
    run = results["run"]
    lines.append(
        f"{run['requests']} requests in {run['wall_time_s']:.1f} s ({run['reused']} records reused from the cache)."
    )
    return "\n".join(lines) + "\n"
