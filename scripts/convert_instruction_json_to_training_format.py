"""Convert the VideoInstruct JSON to the Video-ChatGPT training JSON (the original script's path and flags).

Run from the repository root (the package need not be installed)::

    python scripts/convert_instruction_json_to_training_format.py \
        --input_json_file VideoInstruct_Dataset.json --output_json_file video_chatgpt_training.json \
        [--clip_feature_path <folder of .pkl/.npy features>] [--skip_invalid]

All the work is in ``video_chatgpt.data.convert`` (also ``video-chatgpt convert``).
"""

import sys
from pathlib import Path

try:
    from video_chatgpt.data.convert import PROG, main
except ImportError:  # not installed: use the checkout this script lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from video_chatgpt.data.convert import PROG, main
from video_chatgpt.errors import run_main  # noqa: E402

if __name__ == "__main__":
    # The same one-line errors and exit statuses as `video-chatgpt convert` (traceback with --debug).
    sys.exit(run_main(main, None, PROG))
