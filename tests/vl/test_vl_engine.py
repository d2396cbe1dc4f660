"""Images and videos through the engine (`pipeline()`): greedy tokens equal transformers' greedy choice, chunked
prefill and batching change nothing, the prefix cache tells images apart, bad media get clear errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from interndeploy import EngineConfig, GenerationConfig, pipeline
from interndeploy.vl import MediaError, load_image

from .conftest import data_url, png_bytes, random_image

GREEDY = GenerationConfig(max_new_tokens=6, do_sample=False, ignore_eos=True)


def _pipe(model_dir: Path, **cfg):
    return pipeline(str(model_dir), backend_config=EngineConfig(block_size=4, cpu_kv_budget_gib=0.05,
                                                                session_len=2048, **cfg))


@pytest.fixture(scope="module")
def s1_pipe(vl_dirs: dict[str, Path]):
    pipe = _pipe(vl_dirs["interns1"], enable_prefix_caching=True)
    yield pipe
    pipe.close()


def _hf_greedy(ref, ids: list[int], pixels: torch.Tensor, steps: int) -> list[int]:
    out = []
    with torch.no_grad():
        for _ in range(steps):
            logits = ref(input_ids=torch.tensor([ids + out]), pixel_values=pixels).logits[0, -1]
            out.append(int(logits.argmax()))
    return out


def _run(pipe, ids, mm, gen=GREEDY):
    """RequestOutputs of one engine request (to see num_cached_tokens)."""

    async def go():
        return [o async for o in pipe.engine.generate(ids, gen, multimodal=mm)]

    return asyncio.run_coroutine_threadsafe(go(), pipe._loop).result()


def test_pipeline_image_greedy_matches_transformers(s1_pipe, vl_dirs: dict[str, Path]):
    from interndeploy.testing.tiny_archs import hf_reference
    from interndeploy.testing.tiny_vlm import hf_vlm_reference

    image = random_image(100, 180)
    resp = s1_pipe(("describe this image", image), gen_config=GREEDY)
    ids, mm = s1_pipe._encode(("describe this image", image), True, {})
    assert resp.input_token_len == len(ids) and mm.items[0].pixel_values.shape[0] == 3
    ref = hf_vlm_reference(vl_dirs["interns1"], hf_reference(vl_dirs["interns1-lm"]))
    assert resp.token_ids == _hf_greedy(ref, ids, mm.items[0].pixel_values, 6)


def test_batch_chunked_and_alone_agree(vl_dirs: dict[str, Path], s1_pipe):
    prompts = [("what is it?", random_image(100, 180)),
               ("and these?", [random_image(60, 90, 1), random_image(50, 50, 2)]), "a text prompt too"]
    alone = [s1_pipe(p, gen_config=GREEDY).token_ids for p in prompts]
    batched = [r.token_ids for r in s1_pipe(prompts, gen_config=GREEDY)]
    chunked = _pipe(vl_dirs["interns1"], max_prefill_token_num=7)
    try:
        assert [r.token_ids for r in chunked(prompts, gen_config=GREEDY)] == batched == alone
    finally:
        chunked.close()


def test_prefix_cache_tells_images_apart(s1_pipe):
    a, b = random_image(100, 180, 5), random_image(100, 180, 6)  # same size: same token ids, other pixels
    ids_a, mm_a = s1_pipe._encode(("compare", a), True, {})
    ids_b, mm_b = s1_pipe._encode(("compare", b), True, {})
    assert ids_a == ids_b and mm_a.items[0].content_hash != mm_b.items[0].content_hash
    first = _run(s1_pipe, ids_a, mm_a)
    again = _run(s1_pipe, ids_a, mm_a)
    other = _run(s1_pipe, ids_b, mm_b)
    image_start = mm_a.items[0].ranges[0][0]
    assert again[-1].num_cached_tokens > mm_a.items[0].end - 4  # the image's blocks hit
    assert other[-1].num_cached_tokens <= image_start  # only the text before the image
    tokens = [[t for o in run for t in o.token_ids] for run in (first, again, other)]
    assert tokens[0] == tokens[1]
    fresh = _pipe(s1_pipe.engine.info.path)
    try:
        assert tokens[2] == [t for o in _run(fresh, ids_b, mm_b) for t in o.token_ids]
    finally:
        fresh.close()


def test_video_frames_and_internvl_image_tags(vl_dirs: dict[str, Path]):
    from interndeploy.testing.tiny_models import hf_reference_model
    from interndeploy.testing.tiny_vlm import hf_vlm_reference

    pipe = _pipe(vl_dirs["internvl"])
    try:
        frames = [random_image(64, 64, 20 + i) for i in range(4)]
        msgs = [{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": "what?"}]}]
        ids, mm = pipe._encode(msgs, True, {})
        text = pipe.tokenizer.decode(ids, skip_special_tokens=False, spaces_between_special_tokens=False)
        assert "Frame1: <img>" in text and "Frame4: <img>" in text and len(mm.items[0].ranges) == 4
        ref = hf_vlm_reference(vl_dirs["internvl"], hf_reference_model(vl_dirs["internvl-lm"]))
        assert pipe(msgs, gen_config=GREEDY).token_ids == _hf_greedy(ref, ids, mm.items[0].pixel_values, 6)
        # InternVL style: <image> tags in the text place the message's images, in order
        a, b = random_image(40, 40, 1), random_image(40, 40, 2)
        tagged = [{"role": "user", "content": [{"type": "image_data", "image_data": {"data": a}},
                                               {"type": "image_data", "image_data": {"data": b}},
                                               {"type": "text", "text": "Image-1: <image>\nImage-2: <image>\nsame?"}]}]
        ids, mm = pipe._encode(tagged, True, {})
        text = pipe.tokenizer.decode(ids, skip_special_tokens=False, spaces_between_special_tokens=False)
        assert "Image-1: <img><IMG_CONTEXT>" in text and "</img>\nImage-2: <img>" in text
        assert [item.content_hash for item in mm.items] == [item.content_hash for item in
                                                            pipe._encode(("x", [a, b]), True, {})[1].items]
    finally:
        pipe.close()


def test_load_image_and_bad_media(s1_pipe, tmp_path: Path):
    image = random_image(30, 40)
    path = tmp_path / "cat.png"
    path.write_bytes(png_bytes(image))
    assert load_image(str(path)).size == (40, 30)
    assert load_image(data_url(png_bytes(image), "image/png")).size == (40, 30)
    r1 = s1_pipe(("hi", str(path)), gen_config=GREEDY)
    r2 = s1_pipe(("hi", load_image(str(path))), gen_config=GREEDY)
    assert r1.token_ids == r2.token_ids
    with pytest.raises(MediaError, match="corrupt|cannot be decoded"):
        s1_pipe(("hi", data_url(b"\x89PNG\r\n\x1a\nnot really", "image/png")), gen_config=GREEDY)
    with pytest.raises(MediaError, match="not an image type"):
        s1_pipe(("hi", data_url(png_bytes(image), "text/plain")), gen_config=GREEDY)


def test_text_only_checkpoint_refuses_images(vl_dirs: dict[str, Path]):
    pipe = pipeline(str(vl_dirs["interns1"]), backend_config=EngineConfig(
        block_size=4, cpu_kv_budget_gib=0.05, session_len=512, language_model_only=True))
    try:
        assert pipe.engine.vision is None
        with pytest.raises(MediaError, match="takes text only"):
            pipe(("hi", random_image(20, 20)), gen_config=GREEDY)
        assert pipe("hi", gen_config=GREEDY).generate_token_len == 6
    finally:
        pipe.close()
