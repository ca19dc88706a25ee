"""Bad requests to ``video-chatgpt serve``: each is a clear error in OpenAI's shape with the right status, nothing is
written under the media folder, the server answers the next good request, and the API key is never in its output."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request

import pytest

from tests.helpers import QUESTION
from tests.helpers.serve import API_KEY, MAX_NEW_TOKENS, MAX_REQUEST_MB, client, rel, video_message


def listing(root) -> dict:
    """Every file under ``root`` with its size and modification time (links not followed)."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            stat = os.lstat(os.path.join(folder, name))
            out[os.path.join(folder, name)] = (stat.st_size, stat.st_mtime_ns)
    return out


def two_videos(media) -> list[dict]:
    message = video_message(QUESTION, rel(media["videos"][0], media["root"]))
    message["content"].append({"type": "video_url", "video_url": {"url": rel(media["videos"][1], media["root"])}})
    return [message]


# name -> (messages for the media fixture, HTTP status, words the message holds)
CASES = {
    "no video": (lambda m: [{"role": "user", "content": QUESTION}], 400, "no video"),
    "two videos": (two_videos, 400, "one video per request"),
    "path outside": (lambda m: [video_message(QUESTION, str(m["outside"]))], 400, "outside"),
    "file URL outside": (lambda m: [video_message(QUESTION, f"file://{m['outside']}")], 400, "outside"),
    "dot-dot escape": (lambda m: [video_message(QUESTION, "videos/../../outside/secret.mp4")], 400, "climbs out"),
    "absolute dot-dot escape": (
        lambda m: [video_message(QUESTION, f"{m['root']}/../outside/secret.mp4")],
        400,
        "outside",
    ),
    "symlink escape": (lambda m: [video_message(QUESTION, "escape.mp4")], 400, "outside"),
    "missing file": (lambda m: [video_message(QUESTION, "videos/nope.mp4")], 400, "no such file"),
    "corrupt": (lambda m: [video_message(QUESTION, rel(m["corrupt"], m["root"]))], 400, "video"),
    "zero bytes": (lambda m: [video_message(QUESTION, rel(m["empty"], m["root"]))], 400, "empty"),
    "not a video": (lambda m: [video_message(QUESTION, rel(m["not_video"], m["root"]))], 400, "not a video"),
    "too long": (lambda m: [video_message(QUESTION, rel(m["long"], m["root"]))], 400, "--max_video_seconds"),
    "features of the wrong shape": (
        lambda m: [video_message(QUESTION, "features/wrong_shape.npy", kind="video_features")],
        400,
        "(3, 5)",
    ),
    "not base64": (lambda m: [video_message(QUESTION, "data:video/mp4;base64,@@@")], 400, "base64"),
    "inline garbage": (
        lambda m: [video_message(QUESTION, "data:video/mp4;base64," + base64.b64encode(b"x" * 999).decode())],
        400,
        "not a video",
    ),
    "http URL": (lambda m: [video_message(QUESTION, "http://example.com/a.mp4")], 400, "no downloads"),
    "image part": (
        lambda m: [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}}]}],
        400,
        "image_url",
    ),
    "unknown part": (lambda m: [{"role": "user", "content": [{"type": "hologram"}]}], 400, "unknown part type"),
    "huge body": (
        lambda m: [video_message(QUESTION, "data:video/mp4;base64," + "A" * int(2 * MAX_REQUEST_MB * 2**20))],
        413,
        "--max_request_mb",
    ),
}


@pytest.fixture(scope="module")
def model(server) -> str:
    return client(server["url"]).models.list().data[0].id


@pytest.fixture(scope="module")
def good(server, media, engine, features_of, model):
    """Asks a good question; checks the answer is the model's own."""
    video = media["videos"][0]
    expected = engine.answer(QUESTION, features_of(video), temperature=0, max_new_tokens=MAX_NEW_TOKENS)

    def ask_good() -> None:
        reply = client(server["url"]).chat.completions.create(
            model=model,
            messages=[video_message(QUESTION, rel(video, media["root"]))],
            temperature=0,
            max_tokens=MAX_NEW_TOKENS,
        )
        assert reply.choices[0].message.content == expected

    return ask_good


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request_is_one_clear_error(server, media, model, good, case):
    from openai import APIStatusError

    messages, status, words = CASES[case]
    before = listing(media["root"])
    with pytest.raises(APIStatusError) as caught:
        client(server["url"]).chat.completions.create(
            model=model, messages=messages(media), temperature=0, max_tokens=4
        )
    error = caught.value
    assert error.status_code == status, error.body
    assert set(error.body) == {"message", "type", "param", "code"}  # OpenAI's error object
    assert words in error.body["message"], error.body
    assert "\n" not in error.body["message"] and "Traceback" not in error.body["message"]
    assert listing(media["root"]) == before  # nothing under the media folder written or touched
    good()


def test_wrong_key_unknown_model_and_bad_fields(server, media, model, good):
    from openai import APIStatusError

    message = [video_message(QUESTION, rel(media["videos"][0], media["root"]))]
    with pytest.raises(APIStatusError) as caught:
        client(server["url"], api_key="sk-wrong").chat.completions.create(model=model, messages=message)
    assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
    no_key = urllib.request.Request(  # no Authorization header at all
        server["url"] + "/v1/chat/completions",
        data=json.dumps({"model": model, "messages": message}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(no_key, timeout=30)
    assert refused.value.code == 401 and json.loads(refused.value.read())["error"]["code"] == "invalid_api_key"
    with pytest.raises(APIStatusError) as caught:
        client(server["url"], api_key="sk-wrong").models.list()
    assert caught.value.status_code == 401
    with pytest.raises(APIStatusError) as caught:
        client(server["url"]).chat.completions.create(model="gpt-4o", messages=message)
    assert caught.value.status_code == 404 and caught.value.body["code"] == "model_not_found"
    assert model in caught.value.body["message"]
    for field, value in [("temperature", 3), ("max_tokens", 0), ("top_p", -1), ("stop", ["a"] * 5), ("n", 2)]:
        with pytest.raises(APIStatusError) as caught:
            client(server["url"]).chat.completions.create(model=model, messages=message, **{field: value})
        assert caught.value.status_code == 400 and caught.value.body["param"] == field, (field, caught.value.body)
    bad_turns = [{"role": "assistant", "content": "hi"}, *message]
    with pytest.raises(APIStatusError) as caught:
        client(server["url"]).chat.completions.create(model=model, messages=bad_turns)
    assert caught.value.status_code == 400 and "alternate" in caught.value.body["message"]
    good()


def test_the_key_is_never_logged(server, good, model):
    """After every request above (and a good one and a wrong-key one here, when run alone), the server's whole
    output (its start, its access log, its errors) never holds the key."""
    from openai import APIStatusError

    good()
    with pytest.raises(APIStatusError):
        client(server["url"], api_key=API_KEY[:-1]).models.list()
    log = server["log"].read_text()
    assert "POST /v1/chat/completions" in log  # the log is the server's, with its access lines
    assert API_KEY not in log
