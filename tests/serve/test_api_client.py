"""`interndeploy serve api_client` driven through a pseudo-terminal against the real server (seed 004, 2.1.2)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pexpect

from interndeploy.testing.http_server import ServerThread, free_port

from .conftest import API_KEY, ScriptedEngine
from .test_tool_calls_http import NOW, TOOLS

PROMPT = "double enter to end input >>> "
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def spawn(url: str, *args: str) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, ["-m", "interndeploy.cli.main", "serve", "api_client", url, *args],
                         encoding="utf-8", timeout=60, dimensions=(40, 200))


def say(child: pexpect.spawn, text: str) -> str:
    """Send one message (double Enter) and return what was printed up to the next prompt, ANSI codes kept,
    less the terminal's echo of the message."""
    child.sendline(text)
    child.sendline("")
    child.expect_exact(PROMPT)
    out = child.before.replace("\r\n", "\n")
    echo = text + "\n\n"
    assert out.startswith(echo), out
    return out[len(echo):]


def finish(child: pexpect.spawn) -> None:
    child.sendline("exit")
    child.sendline("")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_streams_replies_and_starts_over(server: ServerThread):
    child = spawn(server.url, "--max-tokens", "8", "--session-id", "7")
    try:
        child.expect_exact("chatting with tiny-internlm2 at " + server.url)
        child.expect_exact(PROMPT)
        reply = say(child, "hi")
        # the tiny random model says noise; what matters is that some text came back and no error did
        assert reply.strip() and "error" not in reply
        assert "[thinking]" not in reply  # no reasoning from this model: no section headers either
        assert say(child, "two\nlines").strip()
        child.sendline("end")
        child.sendline("")
        child.expect_exact("(new session)")
        child.expect_exact(PROMPT)
        finish(child)
    finally:
        child.close(force=True)


def test_thinking_tool_calls_and_history(scripted_server: ServerThread, scripted_engine: ScriptedEngine,
                                         tmp_path: Path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    scripted_engine.reply = f"Let me look it up.\n</think>\n\nChecking now.<|action_start|><|plugin|>\n{NOW}\n"
    child = spawn(scripted_server.url, "--tools", str(tools))
    try:
        child.expect_exact(PROMPT)
        shown = say(child, "How warm is San Francisco?")
        assert "\x1b[2m" in shown  # a terminal: the thinking is dimmed
        plain = ANSI.sub("", shown)
        assert plain.index("[thinking]") < plain.index("Let me look it up.") < plain.index("[answer]")
        assert plain.index("[answer]") < plain.index("Checking now.") < plain.index("[tool call]")
        call = re.search(r"\[tool call\] get_current_temperature\((.*)\)\n", plain)
        assert call and json.loads(call.group(1)) == {"location": "San Francisco, CA, USA"}
        assert "get_temperature_date" in scripted_engine.last_prompt  # the tools were offered

        scripted_engine.reply = "Plain answer."
        assert ANSI.sub("", say(child, "And tomorrow?")).strip().endswith("Plain answer.")
        assert "How warm is San Francisco?" in scripted_engine.last_prompt  # the conversation goes along
        assert "get_current_temperature" in scripted_engine.last_prompt.split("And tomorrow?")[0]
        child.sendline("end")
        child.sendline("")
        child.expect_exact(PROMPT)
        say(child, "Fresh start")
        assert "How warm" not in scripted_engine.last_prompt
        finish(child)
    finally:
        child.close(force=True)


def one_line_failure(url: str, *args: str) -> str:
    child = spawn(url, *args)
    child.expect(pexpect.EOF)
    child.close()
    out = child.before.replace("\r\n", "\n").strip()
    assert child.exitstatus == 1, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    return out


def test_server_down_is_one_line():
    url = f"http://127.0.0.1:{free_port()}"
    out = one_line_failure(url)
    assert out.startswith(f"interndeploy: error: cannot reach the server at {url}")
    assert "interndeploy serve api_server" in out


def test_wrong_key_is_one_line_and_the_right_key_works(guarded_server: ServerThread,
                                                       scripted_engine: ScriptedEngine):
    out = one_line_failure(guarded_server.url, "--api-key", "wrong-key")
    assert "rejected the API key" in out and "--api-key" in out
    out = one_line_failure(guarded_server.url)  # no key at all
    assert "rejected the API key" in out
    scripted_engine.reply = "Welcome."
    child = spawn(guarded_server.url, "--api-key", API_KEY)
    try:
        child.expect_exact(PROMPT)
        assert "Welcome." in say(child, "hi")
        finish(child)
    finally:
        child.close(force=True)


def test_an_error_mid_chat_is_one_line_and_the_chat_goes_on(scripted_server: ServerThread,
                                                            scripted_engine: ScriptedEngine):
    scripted_engine.reply = "ok"
    child = spawn(scripted_server.url, "--max-tokens", "100000")  # more than the session holds: 400
    try:
        child.expect_exact(PROMPT)
        shown = say(child, "hi")
        assert shown.strip().startswith("error: the server answered 400:") and len(shown.strip().splitlines()) == 1
        assert "lower max_tokens" in shown  # the server's own words
        assert say(child, "again").strip().startswith("error:")  # still at the prompt
        finish(child)
    finally:
        child.close(force=True)
