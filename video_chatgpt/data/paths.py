"""Where a training record's feature file is: ``--video_folder / record["video"]``, never outside the folder.

A training JSON from elsewhere may name ``/etc/passwd`` or ``../../other/x.pkl``; the original joined them blindly
(``os.path.join`` even drops the folder for an absolute name). Both are refused here, by the data check and by the
dataset, with one sentence naming the record's ``video`` and the folder. Symbolic links *inside* the folder are
allowed (feature folders are often links to a shared disk), so the check is on the name, not on resolved paths.
The rule is ``files.inside``, the one every reader of a path named by data uses (predict, benchmark, the demo).

    unsafe_video_reason("v_abc.pkl")          # None
    unsafe_video_reason("../x.pkl")           # "climbs out of --video_folder ('..')"
    feature_path("clip_features", "v_abc.pkl")  # Path("clip_features/v_abc.pkl")
"""

from __future__ import annotations

from pathlib import Path

from video_chatgpt.files import inside, unsafe_name_reason

VIDEO_FOLDER_FLAG = "--video_folder"


def unsafe_video_reason(video: object) -> str | None:
    """Why a record's ``video`` cannot name a file inside ``--video_folder``, or None when it can. Pure."""
    if not isinstance(video, str) or not video:
        return "is not a feature file name such as 'v_abc.pkl'"
    return unsafe_name_reason(video, VIDEO_FOLDER_FLAG)


def feature_path(video_folder: str | Path, video: str) -> Path:
    """``video_folder / video``; raises ``UserError`` naming both when ``unsafe_video_reason(video)`` is not None."""
    return inside(video_folder, video, "record video", VIDEO_FOLDER_FLAG)
