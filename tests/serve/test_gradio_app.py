"""`interndeploy serve gradio`: the page in a real headless Chromium (Selenium + Debian's chromedriver), over our
server (seed 004, 2.1.3) and over a model served in-process; the chat handler on its own for the details.

Screenshots go to artifacts/ (CI keeps them). `.ci/run` installs Debian's chromium and chromium-driver."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from interndeploy.serve.gradio_app import DEFAULTS, ChatBackend
from interndeploy.testing.http_server import ServerThread, free_port

from .conftest import ScriptedEngine
from .test_tool_calls_http import NOW, TOOLS

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000"]


def controls(**changes: object) -> list[object]:
    values = {**DEFAULTS, **changes}
    return [values[k] for k in ("temperature", "top_p", "top_k", "max_new_tokens", "thinking")]


def last(handler: Iterator) -> tuple:
    *_, final = handler
    return final


# ---------------------------------------------------------------- the chat handler


def test_handler_streams_thinking_tool_calls_and_keeps_history(scripted_server: ServerThread,
                                                               scripted_engine: ScriptedEngine):
    backend = ChatBackend(scripted_server.url, tools=TOOLS)
    scripted_engine.reply = f"Let me look it up.\n</think>\n\nChecking now.<|action_start|><|plugin|>\n{NOW}\n"
    steps = list(backend.respond("How warm is it?", [], [], *controls(temperature=0.3, top_p=0.9, top_k=5,
                                                                       max_new_tokens=64)))
    assert steps[0] == ("", [{"role": "user", "content": "How warm is it?"}], [])  # the message shows at once
    assert len(steps) > 3  # then the reply, piece by piece
    pending = [s[1][1] for s in steps[1:] if s[1][1].get("metadata", {}).get("status") == "pending"]
    assert pending and pending[0]["metadata"]["title"] == "Thinking"  # open with a spinner while it thinks
    box, shown, history = steps[-1]
    assert box == "" and shown[1:] == [
        {"role": "assistant", "content": "Let me look it up.", "metadata": {"title": "Thinking", "status": "done"}},
        {"role": "assistant", "content": "Checking now."},
        {"role": "assistant", "content": '```json\n{"location": "San Francisco, CA, USA"}\n```',
         "metadata": {"title": "Tool call: get_current_temperature"}},
    ]
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[1]["content"] == "Checking now." and history[1]["tool_calls"][0]["function"]["name"] == \
        "get_current_temperature"
    gen = scripted_engine.last_gen
    assert (gen.temperature, gen.top_p, gen.top_k, gen.max_new_tokens) == (0.3, 0.9, 5, 64)
    assert scripted_engine.last_prompt.endswith("<think>") and "get_temperature_date" in scripted_engine.last_prompt

    scripted_engine.reply = "Sunny."
    _, shown, history = last(backend.respond("Tomorrow?", shown, history, *controls(thinking=False)))
    assert shown[-1] == {"role": "assistant", "content": "Sunny."}  # thinking off: no reasoning parser
    assert not scripted_engine.last_prompt.endswith("<think>")
    assert "How warm is it?" in scripted_engine.last_prompt and len(history) == 4


def test_handler_says_when_the_server_cannot_be_reached():
    url = f"http://127.0.0.1:{free_port()}"
    box, shown, history = last(ChatBackend(url).respond("hi", [], [], *controls()))
    assert history == [] and shown[0] == {"role": "user", "content": "hi"}
    assert shown[1]["content"].startswith(f"Error: cannot reach the server at {url}")


def test_handler_says_when_the_key_is_rejected(guarded_server: ServerThread):
    _, shown, history = last(ChatBackend(guarded_server.url, api_key="wrong").respond("hi", [], [], *controls()))
    assert history == [] and "rejected the API key" in shown[-1]["content"]


# ---------------------------------------------------------------- the page in a browser


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        why = "no chromium/chromedriver on PATH: `apt-get install chromium chromium-driver` (.ci/run does)"
        if os.environ.get("INTERNDEPLOY_BROWSER_TESTS") == "required":
            pytest.fail(why)
        pytest.skip(why)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not download a driver or browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"interndeploy-chromium-{os.getpid()}"
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def gradio_page(target: str, *args: str, timeout: float = 90) -> Iterator[str]:
    """`interndeploy serve gradio TARGET ARGS` on a free loopback port, until the block ends."""
    port = free_port()
    cmd = [sys.executable, "-m", "interndeploy.cli.main", "serve", "gradio", target, "--server-name", "127.0.0.1",
           "--server-port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve gradio exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve gradio did not answer at {url} within {timeout} s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def chat_in_page(driver, url: str | None, message: str, screenshot: str, expect: str = "") -> list[str]:
    """Open the page at `url` (None: stay on it), send `message`, wait until the bot's bubbles stop changing (and
    contain `expect`); save a screenshot; return the texts of the bot's bubbles."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    if url is not None:
        driver.get(url)
    box = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, "#message textarea"))

    def texts(who: str) -> list[str]:
        return [b.text for b in driver.find_elements(By.CSS_SELECTOR, f"#chatbot [data-testid='{who}']")]

    before = texts("bot")
    box.send_keys(message, Keys.ENTER)
    seen, stable_since, deadline = before, time.monotonic(), time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = texts("bot")
        if now != seen:
            seen, stable_since = now, time.monotonic()
        elif seen != before and expect in "\n".join(seen) and time.monotonic() - stable_since > 1.5:
            break
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / screenshot))
    assert texts("user")[-1] == message
    return seen


def set_control(driver, label: str, value: float) -> None:
    """Type `value` into the number box of the slider labelled `label`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    box = WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, f"input[aria-label='number input for {label}']"))
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def test_page_over_a_running_server(server: ServerThread, browser):
    """Seed 004's flow: `serve api_server`, then `serve gradio http://localhost:23333`, then chat in the browser."""
    from selenium.webdriver.common.by import By

    with gradio_page(server.url) as url:
        browser.get(url)
        set_control(browser, "max new tokens", 48)  # leaves room for a second turn in the 1024-token session
        replies = chat_in_page(browser, None, "Hello, who are you?", "gradio.png")
        # the tiny random model says noise: check that a reply streamed into the page, not what it says
        assert len(replies) == 1 and replies[0].strip() and not replies[0].startswith("Error:")
        replies = chat_in_page(browser, None, "And what can you do?", "gradio_second_turn.png")
        assert len(replies) == 2 and replies[1].strip() and not replies[1].startswith("Error:")
        browser.find_element(By.ID, "reset").click()
        time.sleep(1)
        assert not browser.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='user']")


def test_page_shows_thinking_and_tool_calls(scripted_server: ServerThread, scripted_engine: ScriptedEngine,
                                            browser, tmp_path: Path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps({"tools": TOOLS}))
    scripted_engine.reply = f"Let me look it up.\n</think>\n\nChecking now.<|action_start|><|plugin|>\n{NOW}\n"
    with gradio_page(scripted_server.url, "--tools", str(tools)) as url:
        browser.get(url)
        set_control(browser, "top-k (0: off)", 7)
        set_control(browser, "temperature", 0.25)
        text = "\n".join(chat_in_page(browser, None, "How warm is San Francisco?", "gradio_tools.png",
                                      expect="Tool call"))
    assert (scripted_engine.last_gen.top_k, scripted_engine.last_gen.temperature) == (7, 0.25)  # the controls
    assert "Thinking" in text and "Checking now." in text
    assert "Tool call: get_current_temperature" in text and "San Francisco, CA, USA" in text


def test_page_over_the_demo_model_served_in_process(browser):
    """`serve gradio demo`: our server starts in-process on the embedded demo model behind the page."""
    with gradio_page("demo", "--session-len", "2048", "--cpu-kv-budget-gib", "0.1") as url:
        replies = chat_in_page(browser, url, "hi", "gradio_in_process.png")
    assert replies and "".join(replies).strip() and not any(r.startswith("Error:") for r in replies)
