"""A request's video, as the (N, C) features the model reads, from one of three sources:

* ``video_url`` with a path or ``file://`` URL: a file inside ``--allowed_local_media_path`` (after every ``..`` and
  symbolic link is resolved; relative paths are taken from that folder);
* ``video_url`` with ``data:video/<type>;base64,<bytes>``: the video itself, decoded from a temporary file outside
  the media folder (the system's temporary folder; the server refuses to start when that is inside it);
* ``video_features`` (this server's extension) with a path or ``file://`` URL of a ``.pkl``/``.npy`` feature file
  inside the allowed folder, as ``extract-features`` writes them.

Features are cached by the SHA-256 of the file's bytes (``FeatureCache``, least recently used out first), so the
same video sent again, by path or inline, is decoded once. Nothing here writes under the media folder. Every refusal
is a ``MediaError`` (HTTP 400) naming the part and the cause.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from video_chatgpt.errors import UserError
from video_chatgpt.features.decode import DECODE_ERRORS
from video_chatgpt.features.store import FEATURE_SUFFIXES, FeatureFileError, load_features
from video_chatgpt.files import inside, unsafe_name_reason
from video_chatgpt.inference.demo import VideoProblem, probe_video
from video_chatgpt.inference.engine import Engine

FEATURE_CACHE_SIZE = 128  # videos whose features are kept (a 356 x 1024 fp16 array is 0.7 MB)
MEDIA_FLAG = "--allowed_local_media_path"
_DATA_URL = re.compile(r"data:(video/[A-Za-z0-9.+-]+);base64,(.*)", re.DOTALL)
_SUFFIX_OF_TYPE = {"video/mp4": ".mp4", "video/webm": ".webm", "video/x-matroska": ".mkv", "video/quicktime": ".mov",
                   "video/x-msvideo": ".avi", "video/avi": ".avi"}  # fmt: skip


class MediaError(UserError):
    """A video or feature part that cannot be used (HTTP 400); ``param`` names the part."""

    def __init__(self, message: str, param: str = "messages"):
        super().__init__(message)
        self.param = param


class FeatureCache:
    """sha256 hex -> (N, C) features, at most ``size`` entries, least recently used out first; thread-safe."""

    def __init__(self, size: int = FEATURE_CACHE_SIZE):
        self.size = size
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                self.hits += 1
            return found

    def put(self, key: str, features: np.ndarray) -> None:
        with self._lock:
            self._items[key] = features
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get_or_compute(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached features of ``key``, else ``compute()``'s, cached (two threads may both compute a new key)."""
        found = self.get(key)
        if found is None:
            found = compute()
            self.put(key, found)
        return found

    def __len__(self) -> int:
        return len(self._items)


def check_temp_folder(media: Path | None) -> None:
    """Refuse to start when inline videos would be written under the media folder."""
    temp = Path(os.path.realpath(tempfile.gettempdir()))
    if media is not None and temp.is_relative_to(media):
        raise UserError(
            f"{MEDIA_FLAG} {media}: holds the temporary folder {temp}, where inline (data:) videos are written while "
            f"they are decoded; set TMPDIR to a folder outside it"
        )


class Media:
    """Turns a request's video part into features for ``engine`` (see the module doc)."""

    def __init__(self, engine: Engine, allowed: str | Path | None, max_video_seconds: float):
        self.engine = engine
        self.allowed = Path(os.path.realpath(allowed)) if allowed is not None else None
        self.max_video_seconds = max_video_seconds
        self.cache = FeatureCache()
        self._extracting = threading.Lock()  # one video through the vision tower at a time
        check_temp_folder(self.allowed)

    # ------------------------------------------------------------------------------------------------ paths
    def local_file(self, url: str, param: str) -> Path:
        """The file ``url`` (a path or ``file://`` URL) names, resolved, inside the allowed folder."""
        if self.allowed is None:
            raise MediaError(
                f"{param}: local files are not served; start the server with {MEDIA_FLAG} DIR (or send the video "
                f"inline as data:video/mp4;base64,...)",
                param,
            )
        name = url
        if url.startswith("file:"):
            parsed = urlparse(url)
            if parsed.netloc not in ("", "localhost"):
                raise MediaError(f"{param}: {url!r} names another host; only local files are read", param)
            name = unquote(parsed.path)
        elif re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url):
            raise MediaError(
                f"{param}: {url[:80]!r}: only a path, a file:// URL inside {MEDIA_FLAG} or a data:video/...;base64 "
                f"URL are accepted (no downloads)",
                param,
            )
        if not name:
            raise MediaError(f"{param}: an empty path", param)
        if not os.path.isabs(name):  # relative to the folder; never climbing out of it
            reason = unsafe_name_reason(name, MEDIA_FLAG)
            if reason is not None:  # the message without the server's folder path
                raise MediaError(f"{param}: {name!r} {reason}", param)
            name = inside(self.allowed, name, param, MEDIA_FLAG)
        path = Path(os.path.realpath(name))  # every symbolic link and .. resolved
        if not path.is_relative_to(self.allowed):
            raise MediaError(f"{param}: {url!r} is outside {MEDIA_FLAG} (links and .. are followed first)", param)
        if not path.is_file():
            raise MediaError(f"{param}: {url!r}: no such file in {MEDIA_FLAG}", param)
        return path

    # ---------------------------------------------------------------------------------------------- sources
    def video_url(self, url: str, param: str) -> np.ndarray:
        """Features of a ``video_url`` part (a local file or a data: URL)."""
        if url.startswith("data:"):
            return self._inline_video(url, param)
        path = self.local_file(url, param)
        return self.cache.get_or_compute(_file_sha256(path), lambda: self._extract(path, param, Path(url).name))

    def _inline_video(self, url: str, param: str) -> np.ndarray:
        match = _DATA_URL.fullmatch(url)
        if not match:
            raise MediaError(f"{param}: a data: URL must be data:video/<type>;base64,<bytes>", param)
        try:
            data = base64.b64decode(match.group(2), validate=True)
        except (binascii.Error, ValueError):
            raise MediaError(f"{param}: the data: URL is not valid base64", param) from None

        def extract() -> np.ndarray:
            with tempfile.TemporaryDirectory(prefix="video-chatgpt-serve-") as folder:
                path = Path(folder) / f"inline{_SUFFIX_OF_TYPE.get(match.group(1), '.video')}"
                path.write_bytes(data)
                return self._extract(path, param, "the inline video")

        return self.cache.get_or_compute(hashlib.sha256(data).hexdigest(), extract)

    def _extract(self, path: Path, param: str, name: str) -> np.ndarray:
        try:
            info = probe_video(path, float("inf"), name)
        except VideoProblem as exc:
            raise MediaError(f"{param}: {exc}", param) from None
        if info.seconds > self.max_video_seconds:
            raise MediaError(
                f"{param}: {name} is {info.seconds:.1f} s long; this server takes videos up to "
                f"{self.max_video_seconds:g} s (--max_video_seconds)",
                param,
            )
        try:
            with self._extracting:
                return self.engine.video_features(path)
        except DECODE_ERRORS as exc:
            raise MediaError(f"{param}: {name} could not be decoded as a video ({exc})", param) from None

    def feature_file(self, url: str, param: str) -> np.ndarray:
        """The features of a ``video_features`` part: a feature file inside the allowed folder."""
        path = self.local_file(url, param)
        if path.suffix not in FEATURE_SUFFIXES:
            raise MediaError(f"{param}: {Path(url).name}: a feature file is {' or '.join(FEATURE_SUFFIXES)}", param)
        try:
            features = load_features(path)
        except FeatureFileError as exc:
            raise MediaError(f"{param}: {Path(url).name}: {str(exc).removeprefix(str(path) + ': ')}", param) from None
        config = self.engine.model.config
        expected = (config.video_token_len or features.shape[0], config.mm_hidden_size)
        if features.shape != expected:
            raise MediaError(
                f"{param}: {Path(url).name} holds features of shape {features.shape}; this model reads "
                f"{expected} (video tokens, feature width)",
                param,
            )
        return features


def _file_sha256(path: Path, chunk: int = 8 * 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
