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
PROJECTOR_PREFIX = "model.mm_projector."  # every projector tensor's name starts so, for every base

# Keys of a LLaVA / Video-ChatGPT config.json that are not LLaMA fields but are kept on our config (the first four
# tell a June-2023 LLaVA folder from a plain LLaMA one).
MM_CONFIG_KEYS = (
    "mm_vision_tower",
    "mm_hidden_size",
    "use_mm_proj",
    "mm_use_im_start_end",
    "mm_vision_select_layer",
    "mm_use_vid_start_end",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "sep_video_conv_front",
    "video_token_len",
    "num_video_frames",
    "video_patch_token_id",
    "video_start_token_id",
    "video_end_token_id",
    "mm_projector_type",
    "conv_template",
)

# peft's file names of a LoRA adapter (a LoRA run folder holds them).
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"

# The Trainer's state file in a checkpoint folder (written last: its presence means the save finished).
TRAINER_STATE_FILE = "trainer_state.json"

# Token ids of a prompt at inference: ours (the ids training uses) or the original inference's (2 tokens more).
PROMPT_IDS = ("ours", "original")

# Video files the commands find by name (predict's video folder, the demo's examples).
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts")

# The original train.py's default --model_max_length (its dataclass; the document's command passes 2048).
DEFAULT_MODEL_MAX_LENGTH = 512

# Judges that only exercise the pipeline (the sample's word-overlap judge): their scores are never comparable with
# the published gpt-3.5-turbo numbers, and every row that shows both says so.
TEST_JUDGES = frozenset({"sample-rule-judge"})
