"""``video-chatgpt serve``: an OpenAI-compatible API over a trained model. ``app`` (the command and the routes),
``protocol`` (the request and reply format), ``media`` (a request's video as features), ``batching`` (the local
backend: dynamic batching over the ``Engine``)."""
