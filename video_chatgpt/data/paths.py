"""Where a training record's feature file is: ``--video_folder / record["video"]``, never outside the folder.

A training JSON from elsewhere may name ``/etc/passwd`` or ``../../other/x.pkl``; the original joined them blindly
(``os.path.join`` even drops the folder for an absolute name). Both are refused here, by the data check and by the
dataset, with one sentence naming the record's ``video`` and the folder. Symbolic links *inside* the folder are
allowed (feature folders are often links to a shared disk), so the check is on the name, not on resolved paths.

    unsafe_video_reason("v_abc.pkl")          # None
    unsafe_video_reason("../x.pkl")           # "climbs out of --video_folder ('..')"
    feature_path("clip_features", "v_abc.pkl")  # Path("clip_features/v_abc.pkl")
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from video_chatgpt.errors import UserError


def unsafe_video_reason(video: object) -> str | None:
    """Why a record's ``video`` cannot name a file inside ``--video_folder``, or None when it can. Pure."""
    if not isinstance(video, str) or not video:
        return "is not a feature file name such as 'v_abc.pkl'"
    if PurePosixPath(video).is_absolute() or PureWindowsPath(video).is_absolute() or PureWindowsPath(video).drive:
        return "is an absolute path; the training JSON must name files relative to --video_folder"
    if ".." in PurePosixPath(video.replace("\\", "/")).parts:
        return "climbs out of --video_folder ('..'); name a file inside it"
    return None


def feature_path(video_folder: str | Path, video: str) -> Path:
    """``video_folder / video``; raises ``UserError`` naming both when ``unsafe_video_reason(video)`` is not None."""
    reason = unsafe_video_reason(video)
    if reason is not None:
        raise UserError(f"record video {video!r} {reason} (--video_folder {video_folder})")
    return Path(video_folder) / os.path.normpath(video)
