"""Token strings and label constants, defined once for the whole package.

The *numbers* of video tokens are not here on purpose: they come from the configuration
(``num_frames`` temporal tokens + the vision tower's patch grid), see ``video_chatgpt.model``.
"""

# Placeholder written in the training JSON; replaced by the video span when a sample is rendered.
VIDEO_PLACEHOLDER = "<video>"

# Tokens added to the LLaVA tokenizer, in this order (ids 32003, 32004, 32005 on the real 32003-token tokenizer).
VIDEO_PATCH_TOKEN = "<vid_patch>"
VIDEO_START_TOKEN = "<vid_start>"
VIDEO_END_TOKEN = "<vid_end>"

# LLaVA's image tokens, present in the LLaVA-7B-Lightening-v1-1 tokenizer (ids 32000-32002).
IMAGE_PATCH_TOKEN = "<im_patch>"
IMAGE_START_TOKEN = "<im_start>"
IMAGE_END_TOKEN = "<im_end>"

# Label value ignored by the loss (the PyTorch cross-entropy default).
IGNORE_INDEX = -100

# Default vision tower of the original, as a hub id (resolved offline from the Hugging Face cache).
DEFAULT_VISION_TOWER = "openai/clip-vit-large-patch14"

# Default number of sampled frames = number of temporal tokens.
DEFAULT_NUM_FRAMES = 100

# Name of the trained artefact, and its keys (shared with the original's released video_chatgpt-7B.bin).
PROJECTOR_FILE = "mm_projector.bin"
PROJECTOR_WEIGHT_KEY = "model.mm_projector.weight"
PROJECTOR_BIAS_KEY = "model.mm_projector.bias"
EMBED_TOKENS_KEY = "model.embed_tokens.weight"

# Written into a training output folder: names the base model folder the trained projector belongs to.
BASE_POINTER_FILE = "video_chatgpt_base.json"
