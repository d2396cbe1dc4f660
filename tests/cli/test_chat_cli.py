"""`interndeploy chat` driven through a pseudo-terminal."""

from __future__ import annotations

import sys
from pathlib import Path

import pexpect

from interndeploy import GenerationConfig

PROMPT = "double enter to end input >>> "


def test_chat_in_a_terminal(internlm2_dir: Path, internlm2_pipe):
    expected = internlm2_pipe.chat("hi", gen_config=GenerationConfig(max_new_tokens=6)).response.text
    child = pexpect.spawn(
        sys.executable,
        ["-m", "interndeploy.cli.main", "chat", str(internlm2_dir), "--max-new-tokens", "6",
         "--cache-max-entry-count", "0.4", "--session-len", "1024", "--cpu-kv-budget-gib", "0.1"],
        encoding="utf-8",
        timeout=120,
    )
    try:
        child.expect_exact(PROMPT)
        child.sendline("hi")
        child.sendline("")
        child.expect_exact(PROMPT)
        reply = child.before.replace("\r\n", "\n")
        assert expected in reply
        child.sendline("what next?")
        child.sendline("")
        child.expect_exact(PROMPT)
        child.sendline("end")
        child.sendline("")
        child.expect_exact("(new session)")
        child.expect_exact(PROMPT)
        child.sendline("exit")
        child.sendline("")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
