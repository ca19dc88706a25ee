"""Video-ChatGPT: a LLaVA-initialised LLaMA that reads spatio-temporal CLIP video tokens through a linear projector.

Pipeline stages, one subpackage each: ``weights`` -> ``data`` -> ``features`` -> ``model`` -> ``train`` ->
``inference`` / ``eval``. The console command ``video-chatgpt`` (see ``cli.py``) exposes every stage.
"""

__version__ = "0.1.0"
