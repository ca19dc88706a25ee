"""Files a user hands us, read one bounded way: ``read_json``.

Every JSON the commands read from a user's folder (a model's ``config.json``, a run's pointer file, a training or
question file, a checkpoint's state) goes through ``read_json``: a size limit before reading, and any way the text
can fail to be JSON (broken, cut short, not UTF-8, nested deeper than the parser's stack) becomes one ``UserError``
line naming the file, instead of a ``JSONDecodeError`` or a ``RecursionError`` traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from video_chatgpt.errors import UserError

# Config and pointer files are a few KB; instruction and question files reach hundreds of MB (100K records).
DEFAULT_MAX_JSON_BYTES = 4 << 30


def read_json(path: str | Path, *, max_bytes: int = DEFAULT_MAX_JSON_BYTES, expect: type | None = None):
    """The JSON value in ``path``; ``expect`` (``dict`` or ``list``) checks the top-level type.

    Raises ``UserError`` naming the file for: a file over ``max_bytes``, text that is not UTF-8 JSON, nesting too
    deep for the parser, or a top-level value of another type. A missing file stays ``FileNotFoundError``.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(f"{path}: {size:,} bytes, more than the {max_bytes:,} a file of this kind may have")
    raw = path.read_bytes()
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to read") from None
    if expect is not None and not isinstance(value, expect):
        wanted = {dict: "an object ({...})", list: "a list ([...])"}.get(expect, expect.__name__)
        raise UserError(f"{path}: expected {wanted} at the top level, found {type(value).__name__}")
    return value
