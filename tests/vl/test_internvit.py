"""Our InternViT + projector and the whole vision-language model against transformers' InternVL classes holding
the same random weights; our tiling and placeholder tokens against transformers' InternVL processor."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from interndeploy.engine.sampling_params import SamplingParams
from interndeploy.engine.scheduler import ScheduledSeq, SchedulerOutput
from interndeploy.engine.sequence import Sequence
from interndeploy.model_dir import load_model_info
from interndeploy.tokenizer import Tokenizer
from interndeploy.vl.frontend import VisionFrontend
from interndeploy.vl.media import PIPELINE_POLICY
from interndeploy.worker.vision import VisionRunner, build_vision_tower

from .conftest import random_image

CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def _text_reference(kind: str, vl_dirs: dict[str, Path]):
    if kind == "interns1":
        from interndeploy.testing.tiny_archs import hf_reference

        return hf_reference(vl_dirs["interns1-lm"])
    from interndeploy.testing.tiny_models import hf_reference_model

    return hf_reference_model(vl_dirs["internvl-lm"])


@pytest.fixture(scope="module")
def references(vl_dirs: dict[str, Path]) -> dict[str, object]:
    from interndeploy.testing.tiny_vlm import hf_vlm_reference

    return {k: hf_vlm_reference(vl_dirs[k], _text_reference(k, vl_dirs)) for k in ("interns1", "internvl")}


def _tower(model_dir: Path) -> VisionRunner:
    return VisionRunner(build_vision_tower(load_model_info(model_dir), torch.float32, torch.device("cpu"), False))


@pytest.mark.parametrize("kind", ["interns1", "internvl"])
def test_vision_features_match_transformers(kind: str, vl_dirs: dict[str, Path], references: dict):
    pixels = torch.randn(5, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = _tower(vl_dirs[kind]).tower(pixels)
        ref = references[kind].model.get_image_features(pixel_values=pixels).pooler_output
    assert ours.shape == ref.shape == (5, 4, ref.shape[-1])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_select_layer_and_pixel_shuffle_v1(tmp_path: Path, vl_dirs: dict[str, Path]):
    """InternVLChatModel options: features of an earlier layer (later layers not even built) and ps_version v1."""
    import json
    import shutil

    from interndeploy.models.internvit import pixel_shuffle

    d = Path(shutil.copytree(vl_dirs["internvl"], tmp_path / "vl"))
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(select_layer=-2, ps_version="v1")
    (d / "config.json").write_text(json.dumps(cfg))
    tower = _tower(d).tower
    assert len(tower.vision_model.encoder.layers) == 1
    full = _tower(vl_dirs["internvl"]).tower
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        x = full.vision_model.embeddings(pixels)
        x = full.vision_model.encoder.layers[0](x)[:, 1:]
        x = pixel_shuffle(x.reshape(2, 4, 4, -1), 0.5, "v1").reshape(2, 4, -1)
        torch.testing.assert_close(tower(pixels), full.mlp1(x))


def test_tiling_matches_the_reference_image_processor():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from interndeploy.vl.preprocess import ImageProcessor

    ref = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, crop_to_patches=True, min_patches=1,
                                   max_patches=6, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    ours = ImageProcessor(56, 4, 1, 6)
    for h, w in [(100, 180), (56, 56), (300, 40), (57, 113), (500, 500), (20, 300), (90, 60)]:
        image = random_image(h, w, seed=h + w)
        out = ref(images=[image], return_tensors="pt", crop_to_patches=True)
        mine = ours.image(image)
        assert mine.shape[0] == int(out["num_patches"][0]) == ref.get_number_of_image_patches(h, w, {})
        torch.testing.assert_close(mine, out["pixel_values"], atol=1e-6, rtol=0)


def _frontend(model_dir: Path) -> tuple[VisionFrontend, Tokenizer]:
    tok = Tokenizer.from_dir(model_dir)
    return VisionFrontend(load_model_info(model_dir), tok.token_to_id, {"video": {"num_frames": 3}}), tok


def _encode(model_dir: Path, content: list[dict], session_len: int = 4096):
    front, tok = _frontend(model_dir)
    job = front.encode([{"role": "user", "content": content}], lambda m: CHATML.format(m[0]["content"]),
                       lambda t: tok.encode(t, add_bos=False), None, PIPELINE_POLICY, session_len)
    return asyncio.run(job), tok


def test_placeholder_tokens_match_the_reference_processor(vl_dirs: dict[str, Path]):
    """The HF processor writes <IMG_CONTEXT> x image_seq_length x tiles between <img> and </img> where the chat
    template put each image, and Frame{i}: ... lines for a video: same ids here."""
    from transformers import PreTrainedTokenizerFast
    from transformers.models.internvl.processing_internvl import InternVLProcessor

    d = vl_dirs["interns1"]
    a, b = random_image(100, 180, 1), random_image(60, 60, 2)
    frames = [random_image(40, 50, 10 + i) for i in range(3)]
    content = [{"type": "image_data", "image_data": {"data": a}}, {"type": "text", "text": "and"},
               {"type": "image_data", "image_data": {"data": b}}, {"type": "video", "video": frames},
               {"type": "text", "text": "what changed?"}]
    (ids, mm), _ = _encode(d, content)
    proc = object.__new__(InternVLProcessor)  # its constructor wants torchvision for the video processor
    proc.start_image_token, proc.end_image_token, proc.image_token = "<img>", "</img>", "<IMG_CONTEXT>"
    proc.image_seq_length = 4
    tiles = [item.pixel_values.shape[0] for item in mm.items]
    assert tiles == [3, 1, 3]
    text = CHATML.format(
        "<IMG_CONTEXT>\nand<IMG_CONTEXT>\n<video>\nwhat changed?"
    )  # what the InternVL chat template renders for these parts
    text = text.replace("<IMG_CONTEXT>", "\0", 2)
    for n in tiles[:2]:
        text = text.replace("\0", proc.replace_image_token({"num_patches": [n]}, 0), 1)
    video = {"pixel_values_videos": [mm.items[2].pixel_values]}
    text = text.replace("<video>", proc.replace_video_token(video, 0))
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
    assert ids == hf_tok.encode(text, add_special_tokens=False)
    ctx = hf_tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert [p for p, t in enumerate(ids) if t == ctx] == [p for item in mm.items for r in item.ranges
                                                          for p in range(*r)]


def _our_logits(model_dir: Path, ids: list[int], mm, chunk: int | None = None) -> torch.Tensor:
    """Prefill logits of every prompt position through our language model with the vision features spliced in by
    the runner's hook, in chunks of `chunk` tokens."""
    from interndeploy.testing.attention import PagedBatch, attach_kv_caches, detach_kv_caches
    from interndeploy.testing.compare import load_our_model
    from interndeploy.worker.forward_context import forward_context

    model, vision = load_our_model(model_dir), _tower(model_dir)
    seq = Sequence(list(ids), SamplingParams())
    seq.multimodal = mm
    batch = PagedBatch([len(ids)], 4)
    attach_kv_caches(model, batch.num_blocks, 4, dtype=torch.float32)
    out = []
    with torch.no_grad():
        while seq.num_computed_tokens < len(ids):
            n = min(chunk or len(ids), len(ids) - seq.num_computed_tokens)
            start = seq.num_computed_tokens
            embeds = vision.input_embeds(SchedulerOutput([ScheduledSeq(seq, n)]), ids[start : start + n], model)
            meta, positions = batch.step([n])
            with forward_context(meta):
                hidden = model(torch.tensor(ids[start : start + n]), positions, embeds)
            out.append(model.compute_logits(hidden))
            seq.num_computed_tokens += n
    detach_kv_caches(model)
    return torch.cat(out)


@pytest.mark.parametrize("kind", ["interns1", "internvl"])
def test_image_prompt_logits_match_transformers(kind: str, vl_dirs: dict[str, Path], references: dict):
    d = vl_dirs[kind]
    content = [{"type": "text", "text": "look:"}, {"type": "image_data", "image_data": {"data": random_image(90, 60)}},
               {"type": "image_data", "image_data": {"data": random_image(40, 40, 3)}},
               {"type": "text", "text": "what is this?"}]
    (ids, mm), _ = _encode(d, content)
    pixels = torch.cat([item.pixel_values for item in mm.items])
    with torch.no_grad():
        ref = references[kind](input_ids=torch.tensor([ids]), pixel_values=pixels).logits[0].float()
    torch.testing.assert_close(_our_logits(d, ids, mm), ref, atol=2e-4, rtol=0)
    # a prefill chunk of 5 tokens starts and ends inside the images: each takes its slice of the features
    torch.testing.assert_close(_our_logits(d, ids, mm, chunk=5), ref, atol=2e-4, rtol=0)
