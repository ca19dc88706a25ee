"""The demo through ``gradio_client`` (no browser): the streamed answer equals ``video-chatgpt chat --temperature 0``,
two turns, and every kind of bad input explained without stopping the server."""

from __future__ import annotations

import pytest

from tests.helpers import MAX_NEW_TOKENS, QUESTION, SECOND_QUESTION


@pytest.fixture()
def client(demo_server):
    from gradio_client import Client

    return Client(demo_server["url"], verbose=False)


def upload(client, path):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/upload_video")


def text_of(message: dict) -> str:
    content = message["content"]
    if isinstance(content, list):  # gradio 6 may send [{"type": "text", "text": ...}]
        return "".join(part.get("text", "") for part in content)
    return content


def test_answer_streams_and_equals_chat_then_a_second_turn(client, demo_inputs, expected_answer):
    video, status, chat = upload(client, demo_inputs["video"])
    assert chat == [] and "video tokens" in status and "computed once" in status
    job = client.submit(QUESTION, 0, MAX_NEW_TOKENS, api_name="/ask")
    final_chat, box, status_after = job.result()
    outputs = job.outputs()  # every update the page received, in order
    assert [m["role"] for m in final_chat] == ["user", "assistant"]
    assert text_of(final_chat[1]) == expected_answer
    partial = [text_of(o[0][-1]) for o in outputs if o[0] and o[0][-1]["role"] == "assistant"]
    assert len(set(partial)) >= 2, partial  # streamed: the answer grew over several updates
    assert all(expected_answer.startswith(p.strip()) for p in partial), partial
    assert box == "" and "video tokens" in status_after  # the feature time is still the status, not recomputed
    # Turn 2 is rendered after turn 1 (the video stays in turn 1) and both turns are shown.
    second = client.predict(SECOND_QUESTION, 0, MAX_NEW_TOKENS, api_name="/ask")[0]
    assert [text_of(m) for m in second[:2]] == [QUESTION, expected_answer]
    assert text_of(second[2]) == SECOND_QUESTION and len(second) == 4
    cleared = client.predict(api_name="/clear_chat")
    assert cleared[0] == []
    again = client.predict(QUESTION, 0, MAX_NEW_TOKENS, api_name="/ask")[0]
    assert text_of(again[1]) == expected_answer  # Clear chat keeps the video's features


@pytest.mark.parametrize(
    "kind, words",
    [
        ("corrupt", "damaged"),
        ("empty", "is empty (0 bytes)"),
        ("not_video", "is not a video"),
        ("audio_only", "has sound but no picture"),
        ("long", "is 12.0 s long; this demo takes videos up to 10.0 s"),
    ],
)
def test_bad_input_is_explained_and_the_server_keeps_serving(client, demo_server, demo_inputs, kind, words):
    video, status, chat = upload(client, demo_inputs[kind])
    assert words in status, status
    assert video is None and chat == []
    # A question now is about no video, and says so.
    chat, box, status = client.predict(QUESTION, 0, MAX_NEW_TOKENS, api_name="/ask")
    assert "No video yet: upload one" in status and chat == [] and box == QUESTION
    assert demo_server["process"].poll() is None


def test_question_before_any_video(client):
    chat, box, status = client.predict(QUESTION, 0.2, 8, api_name="/ask")
    assert "No video yet: upload one" in status and chat == []


def test_two_sessions_at_once_are_queued_and_kept_apart(demo_server, demo_inputs, expected_answer):
    """Two browsers asking at the same time: the model serves one request at a time (one queue slot), and each
    session keeps its own video and conversation."""
    from gradio_client import Client

    first, second = (Client(demo_server["url"], verbose=False) for _ in range(2))
    upload(first, demo_inputs["video"])
    upload(second, demo_inputs["video"])
    jobs = [c.submit(QUESTION, 0, MAX_NEW_TOKENS, api_name="/ask") for c in (first, second)]
    for job in jobs:
        chat = job.result()[0]
        assert [text_of(m) for m in chat] == [QUESTION, expected_answer]
    # A session without a video is not served another session's.
    chat, _, status = Client(demo_server["url"], verbose=False).predict(QUESTION, 0, 8, api_name="/ask")
    assert chat == [] and "No video yet: upload one" in status
