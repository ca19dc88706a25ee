"""lmms-eval task ``vcg_sample_colour``: multiple-choice colour questions about the sample world's held-out videos.

Loaded by lmms-eval from the task folder (``--include_path``), in lmms-eval's own virtualenv: standard library only.
``video-chatgpt sample lmms-task`` writes this file beside the task's YAML and its local data file; each record is
``{"question_id", "video" (absolute path), "prompt", "options", "answer" (the letter)}``. The prompt is written by
``video_chatgpt/sample/lmms_task.py`` and sent verbatim; the one scoring rule, ``chosen_option``, is also what the
project's test applies to ``video-chatgpt predict``'s answers to the same prompts.
"""

import re

LETTERS = "ABCDEFGH"


def chosen_option(reply, options):
    """The letter of the option a reply chooses, or "" when it chooses none (or several).

    A reply that is a letter or starts with one marked as an option ("B", "B.", "(B)", "B) green") chooses that
    letter (not "A green circle": there "A" is a word); otherwise the reply chooses the one option whose text it
    names as a whole word ("The object is green." -> the letter of "green")."""
    text = reply.strip()
    letters = LETTERS[: len(options)]
    match = re.match(r"^(?:\(([A-H])\)|([A-H])(?:[.)]|$))", text)
    letter = match and (match.group(1) or match.group(2))
    if letter:
        return letter if letter in letters else ""
    named = [
        letter
        for letter, option in zip(letters, options)
        if re.search(r"\b" + re.escape(option.lower()) + r"\b", text.lower())
    ]
    return named[0] if len(named) == 1 else ""


def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["prompt"]


def doc_to_messages(doc, lmms_eval_specific_kwargs=None):
    """One user turn: the video, then the prompt (sent to an OpenAI-compatible server as a video_url part)."""
    return [
        {
            "role": "user",
            "content": [{"type": "video", "url": doc["video"]}, {"type": "text", "text": doc["prompt"]}],
        }
    ]


def doc_to_target(doc):
    return doc["answer"]


def process_results(doc, results):
    reply = results[0] if results else ""
    correct = chosen_option(reply, doc["options"]) == doc["answer"]
    return {"accuracy": 1.0 if correct else 0.0}
