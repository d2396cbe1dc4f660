"""Images and videos through the real server and the `openai` client: data URLs, several images, a video made
here, and 400s for corrupt media, refused URLs and too many frames."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import openai
import pytest

from interndeploy.config import EngineConfig, VisionConfig
from interndeploy.engine.async_engine import AsyncEngine
from interndeploy.serve.openai import ServerSettings, build_app
from interndeploy.testing.http_server import ServerThread
from interndeploy.vl.media import MediaError, MediaPolicy, fetch_url

from .conftest import data_url, mp4_bytes, png_bytes, random_image

MODEL = "tiny-intern-s1"


@pytest.fixture(scope="module")
def vl_server(vl_dirs: dict[str, Path]):
    cfg = EngineConfig(block_size=16, cpu_kv_budget_gib=0.05, session_len=400)
    engine = AsyncEngine(str(vl_dirs["interns1"]), cfg, model_name=MODEL,
                         vision_config=VisionConfig(media_io_kwargs={"video": {"num_frames": 4, "fps": 2}}))
    policy = MediaPolicy(allowed_domains=("127.0.0.1", "media.example"))
    with ServerThread(build_app(engine, ServerSettings(media_policy=policy))) as srv:
        yield srv, engine
    engine.shutdown()


def _client(srv: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(api_key="EMPTY", base_url=srv.url + "/v1", max_retries=0, timeout=60)


def _chat(srv, content, **kw):
    return _client(srv).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=4, temperature=0,
        extra_body={"ignore_eos": True, "enable_thinking": False}, **kw)


def _image_part(image) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(png_bytes(image), "image/png")}}


def test_data_url_image_and_two_images(vl_server):
    srv, engine = vl_server
    one = _chat(srv, [_image_part(random_image(100, 180)), {"type": "text", "text": "Describe the image."}])
    text_only = _chat(srv, [{"type": "text", "text": "Describe the image."}])
    assert one.choices[0].finish_reason == "length" and one.usage.completion_tokens == 4
    assert one.usage.prompt_tokens == text_only.usage.prompt_tokens + 3 * 4 + 3  # 3 tiles of 4 tokens, <img> </img> \n
    two = _chat(srv, [_image_part(random_image(100, 180)), {"type": "text", "text": "versus"},
                      _image_part(random_image(40, 40, 1)), {"type": "text", "text": "which?"}], stream=True)
    chunks = list(two)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_generated_video(vl_server):
    srv, _ = vl_server
    video = {"type": "video_url", "video_url": {"url": data_url(mp4_bytes(num_frames=8, fps=4), "video/mp4")}}
    r = _chat(srv, [video, {"type": "text", "text": "What happens?"}])
    text_only = _chat(srv, [{"type": "text", "text": "What happens?"}])
    # 8 frames at 4 fps = 2 s, fps 2 and num_frames 4: 4 frames of 4 tokens, each "FrameN: <img>...</img>"
    assert r.usage.prompt_tokens > text_only.usage.prompt_tokens + 4 * (4 + 2)


def _bad(srv, content) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as e:
        _chat(srv, content)
    return e.value


def test_bad_media_get_400(vl_server):
    srv, _ = vl_server
    corrupt = {"type": "image_url", "image_url": {"url": data_url(b"\x89PNG\r\n\x1a\n garbage", "image/png")}}
    err = _bad(srv, [corrupt, {"type": "text", "text": "hi"}])
    assert "image" in err.body["message"] and err.body["param"] == "messages[0].content[0].image_url"
    err = _bad(srv, [{"type": "image_url", "image_url": {"url": "https://elsewhere.example/cat.png"}}])
    assert "not allowed" in err.body["message"] and "--allowed-media-domains" in err.body["message"]
    err = _bad(srv, [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}])
    assert "private, loopback" in err.body["message"]
    err = _bad(srv, [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}])
    assert "scheme 'file' is not allowed" in err.body["message"] or "not a data" in err.body["message"]
    err = _bad(srv, [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}])
    assert err.body["param"] == "messages[0].content[0]"
    too_many = [_image_part(random_image(100, 600, i)) for i in range(16)]  # 7 tiles each: past session_len
    err = _bad(srv, too_many)
    assert "session_len" in err.body["message"]
    assert _chat(srv, "still fine").choices[0].finish_reason == "length"


def test_fetching_follows_the_policy_on_redirects(tmp_path: Path):
    import asyncio

    (tmp_path / "cat.png").write_bytes(png_bytes(random_image(10, 10)))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/away":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        local = MediaPolicy(allowed_domains=("127.0.0.1", "169.254.169.254"), allow_private_addresses=True)
        assert asyncio.run(fetch_url(base + "/cat.png", local))[:4] == b"\x89PNG"
        with pytest.raises(MediaError, match="HTTP 404"):
            asyncio.run(fetch_url(base + "/nope.png", local))
        with pytest.raises(MediaError, match="larger than"):
            asyncio.run(fetch_url(base + "/cat.png", MediaPolicy(("127.0.0.1",), True, max_bytes=10)))
        with pytest.raises(MediaError, match="is not allowed"):  # the redirect leaves the allowed hosts
            asyncio.run(fetch_url(base + "/away", MediaPolicy(("127.0.0.1",), True)))
        with pytest.raises(MediaError, match="private"):
            asyncio.run(fetch_url(base + "/cat.png", MediaPolicy(("*",))))
    finally:
        server.shutdown()
