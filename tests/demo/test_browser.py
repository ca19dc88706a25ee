"""The demo in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium): upload a
video, see it play, ask, read the streamed answer (equal to ``video-chatgpt chat --temperature 0``), ask again and see
both turns, then upload a damaged file and read the error. A screenshot is kept (pytest's tmp dir and
``runs/demo_screenshot.png``). Without Chromium this test fails: ``.ci/run`` installs it."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.helpers import QUESTION, REPO, SECOND_QUESTION

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = ("chromedriver",)
WAIT_S = 90  # bounded waits: feature extraction and generation on 2 busy cores


def find_program(names) -> str:
    for name in names:
        path = shutil.which(name) or f"/usr/bin/{name}"
        if os.path.exists(path):
            return path
    raise AssertionError(
        f"none of {names} is installed: the browser test needs Debian's chromium and "
        f"chromium-driver (apt-get install -y chromium chromium-driver; .ci/run does it)"
    )


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = find_program(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-gpu",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(find_program(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, what: str, timeout: float = WAIT_S):
    """Poll ``condition(driver)`` until it is truthy; fail naming ``what`` and the page's visible text."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition(driver)
        if value:
            return value
        if time.monotonic() > deadline:
            body = driver.find_element("tag name", "body").text
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; the page shows:\n{body[-2000:]}")
        time.sleep(0.25)


def text(driver, css: str) -> str:
    found = driver.find_elements("css selector", css)
    return found[0].text if found else ""


def messages(driver) -> list[tuple[str, str]]:
    """(role, text) of the chat's messages, in order."""
    out = []
    for el in driver.find_elements("css selector", "#demo-chat [data-testid='user'], #demo-chat [data-testid='bot']"):
        out.append(("user" if el.get_attribute("data-testid") == "user" else "assistant", el.text.strip()))
    return out


def upload(driver, path):
    """Upload as a user does: one more upload, with no clear button (x) to press first (the box empties itself)."""
    field = wait_for(
        driver, lambda d: d.find_elements("css selector", "#demo-upload input[type='file']"), "the video upload field"
    )
    field[0].send_keys(str(path))


def ask(driver, question: str):
    box = driver.find_element("css selector", "#demo-question textarea")
    box.clear()
    box.send_keys(question)
    driver.find_element("css selector", "#demo-send").click()


def video_plays(driver) -> bool:
    """The page's player has the video's picture and its clock moves when played."""
    return bool(
        driver.execute_script("""
        const v = document.querySelector('#demo-video video');
        if (!v || !(v.videoWidth > 0) || !(v.duration > 0)) return false;
        v.muted = true; v.play();
        return v.currentTime > 0;""")
    )


def test_upload_ask_stream_two_turns_and_a_damaged_file(browser, demo_server, demo_inputs, expected_answer, tmp_path):
    browser.get(demo_server["url"])
    wait_for(browser, lambda d: "Upload a video or pick an example first" in text(d, "#demo-status"), "the page")
    upload(browser, demo_inputs["video"])
    status = wait_for(
        browser,
        lambda d: "video tokens" in text(d, "#demo-status") and text(d, "#demo-status"),
        "the uploaded video's features",
    )
    assert demo_inputs["video"].name in status and "computed once" in status
    wait_for(browser, video_plays, "the video to play in the page")
    body = browser.find_element("tag name", "body").text
    assert "not playable" not in body and "Error" not in body, body  # no error toast for a good upload

    ask(browser, QUESTION)
    wait_for(
        browser,
        lambda d: messages(d) == [("user", QUESTION), ("assistant", expected_answer)],
        f"the streamed answer {expected_answer!r}",
    )
    ask(browser, SECOND_QUESTION)
    wait_for(
        browser,
        lambda d: (
            len(messages(d)) == 4
            and messages(d)[2] == ("user", SECOND_QUESTION)
            and messages(d)[3][1]
            and "video tokens" in text(d, "#demo-status")
        ),
        "the second turn",
    )
    shown = messages(browser)
    assert shown[:2] == [("user", QUESTION), ("assistant", expected_answer)]  # both turns on the page
    time.sleep(1)  # let the last update render before the screenshot
    shot = tmp_path / "demo_screenshot.png"
    assert browser.save_screenshot(str(shot))
    (REPO / "runs").mkdir(exist_ok=True)
    shutil.copy(shot, REPO / "runs" / "demo_screenshot.png")

    upload(browser, demo_inputs["corrupt"])
    wait_for(
        browser,
        lambda d: "is not a video, or it is damaged" in text(d, "#demo-status"),
        "the damaged file's error on the page",
    )
    assert messages(browser) == []  # a new video (here: none) starts a new conversation
    browser.save_screenshot(str(tmp_path / "demo_error.png"))

    # An example (the held-out sample videos given with --examples) is chosen like an upload.
    example = sorted(demo_inputs["video"].parent.glob("*.mp4"))[1].name
    browser.find_element("xpath", f"//button[normalize-space()='{example}']").click()
    wait_for(
        browser,
        lambda d: example in text(d, "#demo-status") and "video tokens" in text(d, "#demo-status"),
        f"the example {example}",
    )
    wait_for(browser, video_plays, "the example to play in the page")
    assert demo_server["process"].poll() is None
