"""Train the embedded demo model from scratch: synthetic corpus -> BPE tokenizer -> tiny Llama -> InternLM2 dir.

    python -m interndeploy.demo.train --out interndeploy/demo/model --recipe   # the shipped model, ~25 min, one H100
    python -m interndeploy.demo.train --out DIR --steps 20 --examples 4000 --eval 20   # smoke run on CPU

Steps, all seeded (`--seed`):
1. `corpus.generate` draws `--examples` conversations (in parallel chunks whose seeds depend only on the chunk
   index, so the data do not depend on the number of processes) and renders them with our chat templates.
2. A byte-level BPE (`--vocab` ids, digits split one by one, InternLM2 specials + <think>/<tool_call> as added
   tokens) is trained on the rendered text, with the Intern-S1 template as its chat template.
3. `transformers.LlamaForCausalLM` is trained on prompt + completion: the loss is the completion tokens' plus
   `--prompt-loss-weight` times the prompt tokens' (0: completions only).
4. The weights are written as an InternLM2 checkpoint (grouped packed `wqkv`, bf16, one safetensors file) and
   read back through the transformers reference for the held-out evaluation, which is printed.

`--init DIR` continues from a trained directory (same tokenizer, fresh data with another `--seed`, a new schedule):
the shipped model is two runs, each fitting one 10-minute machine lease (README, "The demo model").

`--time-limit` / `--deadline` stop training early (the learning-rate schedule then follows elapsed time), so a run
fits a machine lease; without them the run is the same on every machine up to GPU arithmetic.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from interndeploy.chat.builtin import INTERN_S1_TEMPLATE
from interndeploy.demo import corpus
from interndeploy.testing.tiny_models import internlm2_config, llama_to_internlm2
from interndeploy.testing.tokenizers import INTERNLM2_SPECIALS, REASONING_TOKENS, train_bpe_tokenizer

MODEL_SHAPE = dict(
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=40960,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
)
_SPECIAL_RE = re.compile("|".join(map(re.escape, ("<s>", "</s>", *INTERNLM2_SPECIALS, *REASONING_TOKENS))))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- data


def _render_chunk(job: tuple[int, int, int, dict[str, float] | None]) -> list[tuple[str, str]]:
    seed, index, size, families = job
    return [corpus.render(ex) for ex in corpus.generate(size, seed=seed * 100_003 + index, families=families)]


def render_corpus(
    n: int, seed: int, workers: int, chunk: int = 2000, families: dict[str, float] | None = None
) -> list[tuple[str, str]]:
    jobs = [(seed, i, min(chunk, n - i * chunk), families) for i in range(-(-n // chunk))]
    if workers <= 1:
        parts = [_render_chunk(j) for j in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    return [s for part in parts for s in part]


def build_tokenizer(out: Path, samples: list[tuple[str, str]], vocab: int) -> Any:
    """Train the BPE on the rendered text with the special tokens cut out (they are added tokens)."""
    from tokenizers import Tokenizer

    texts = [piece for p, c in samples for piece in _SPECIAL_RE.split(p + c) if piece]
    train_bpe_tokenizer(
        out, vocab_size=vocab, chat_template=INTERN_S1_TEMPLATE, corpus=texts, bare_words=True, max_token_length=4
    )
    return Tokenizer.from_file(str(out / "tokenizer.json"))


class Tokens:
    """All training samples in one flat array: sample i is flat[start[i] : start[i] + length[i]], its first
    prompt_len[i] tokens the prompt (tokenized as the engine does: BOS added when the template wrote none)."""

    def __init__(self, tok: Any, samples: list[tuple[str, str]], bos: int, max_len: int) -> None:
        prompts = tok.encode_batch([p for p, _ in samples], add_special_tokens=False)
        completions = tok.encode_batch([c for _, c in samples], add_special_tokens=False)
        pieces, lengths, prompt_lens = [], [], []
        for p, c in zip(prompts, completions, strict=True):
            ids = p.ids if p.ids[:1] == [bos] else [bos, *p.ids]
            if len(ids) + len(c.ids) <= max_len:  # longer samples are dropped
                pieces.append(np.asarray(ids + c.ids, dtype=np.int32))
                lengths.append(len(ids) + len(c.ids))
                prompt_lens.append(len(ids))
        self.flat = np.concatenate(pieces)
        self.length = np.asarray(lengths, dtype=np.int64)
        self.prompt_len = np.asarray(prompt_lens, dtype=np.int64)
        self.start = np.concatenate(([0], np.cumsum(self.length)[:-1]))

    def __len__(self) -> int:
        return len(self.length)

    def batches(self, budget: int, rng: random.Random) -> list[np.ndarray]:
        """Index batches of similar length whose padded size stays within `budget` tokens, in random order."""
        noise = np.asarray([rng.random() * 24 for _ in range(len(self))])
        order = np.argsort(self.length + noise, kind="stable")
        out, cur, longest = [], [], 0
        for i in order.tolist():
            n = -(-int(self.length[i]) // 32) * 32
            if cur and max(longest, n) * (len(cur) + 1) > budget:
                out.append(np.asarray(cur))
                cur, longest = [], 0
            cur.append(i)
            longest = max(longest, n)
        if cur:
            out.append(np.asarray(cur))
        rng.shuffle(out)
        return out

    def collate(self, idx: np.ndarray, pad: int, with_prompt: bool = False) -> tuple[torch.Tensor, ...]:
        """(input ids [B, W], flat positions predicting a completion token [N], those tokens [N], and the same two
        for the prompt tokens after the first when `with_prompt`, else empty).

        Position t predicts token t + 1, so row r's targets sit at r * W + prompt_len - 1 ... r * W + length - 2.
        Positions are known on the host: the loss gathers them without a device sync."""
        width = -(-int(self.length[idx].max()) // 32) * 32
        ids = np.full((len(idx), width), pad, dtype=np.int64)
        positions, targets, p_positions, p_targets = [], [], [], []
        for row, i in enumerate(idx.tolist()):
            n, p, s = int(self.length[i]), int(self.prompt_len[i]), int(self.start[i])
            ids[row, :n] = self.flat[s : s + n]
            positions.append(np.arange(row * width + p - 1, row * width + n - 1))
            targets.append(self.flat[s + p : s + n])
            if with_prompt:
                p_positions.append(np.arange(row * width, row * width + p - 1))
                p_targets.append(self.flat[s + 1 : s + p])
        out = [torch.from_numpy(ids)]
        for pos, tgt in ((positions, targets), (p_positions, p_targets)):
            out.append(torch.from_numpy(np.concatenate(pos) if pos else np.zeros(0, dtype=np.int64)))
            out.append(torch.from_numpy(np.concatenate(tgt).astype(np.int64) if tgt else np.zeros(0, dtype=np.int64)))
        return tuple(out)


# ---------------------------------------------------------------- model


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def make_model(vocab: int, seed: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,  # trains each output row through the input too: rare pieces stay copyable
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        **MODEL_SHAPE,
    )
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def loss_of(
    model: Any,
    ids: torch.Tensor,
    pos: torch.Tensor,
    tgt: torch.Tensor,
    prompt_pos: torch.Tensor,
    prompt_tgt: torch.Tensor,
    prompt_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to minimise, completion loss): mean cross-entropy over the completion tokens, plus `prompt_weight`
    times the mean over the prompt tokens (language modelling of tool lists and questions; 0: off)."""
    hidden = model.model(input_ids=ids).last_hidden_state.flatten(0, 1)
    picked = hidden.index_select(0, pos)  # only where a completion token is predicted
    loss = F.cross_entropy(model.lm_head(picked).float(), tgt)
    if not prompt_weight:
        return loss, loss
    prompt_loss = F.cross_entropy(model.lm_head(hidden.index_select(0, prompt_pos)).float(), prompt_tgt)
    return loss + prompt_weight * prompt_loss, loss


def export(model: Any, out: Path, tok: Any) -> None:
    """Weights (bf16, InternLM2 layout), config.json and generation_config.json into `out`."""
    from safetensors.torch import save_file

    ids = {t: tok.token_to_id(t) for t in ("<s>", "</s>", "<|im_end|>", "<|action_end|>")}
    config = {
        **internlm2_config(**MODEL_SHAPE),
        "vocab_size": tok.get_vocab_size(),
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "pad_token_id": ids["</s>"],
        "torch_dtype": "bfloat16",
    }
    state = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    save_file(llama_to_internlm2(state, config), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    gen = {
        "bos_token_id": ids["<s>"],
        "eos_token_id": [ids["</s>"], ids["<|im_end|>"], ids["<|action_end|>"]],
        "pad_token_id": ids["</s>"],
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- training

# The shipped weights: three runs, the second and third continuing the previous one (`--init`). Each was a time-limited
# run on one H100 (`--time-limit 420`); these are the step counts they reached, so `--recipe` repeats them anywhere.
SHIPPED_RECIPE: tuple[tuple[str, ...], ...] = (
    ("--steps", "6251"),
    ("--steps", "6520", "--seed", "1", "--lr", "1e-3", "--warmup", "100", "--examples", "300000"),
    ("--steps", "6218", "--seed", "2", "--lr", "7e-4", "--warmup", "100", "--examples", "300000",
     "--families", "tool=75,arith=8,chat=12,chat_tools=5"),
)  # fmt: skip


def train(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    random.seed(args.seed)
    t0 = time.time()
    samples = render_corpus(args.examples, args.seed, args.workers, families=args.families)
    log(f"rendered {len(samples)} examples in {time.time() - t0:.0f} s")
    if args.init:  # continue from a trained directory: its tokenizer, its weights
        from tokenizers import Tokenizer

        init = Path(args.init)
        if init.resolve() != out.resolve():
            for name in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(init / name, out / name)
        tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    else:
        tok = build_tokenizer(out, samples[: args.tokenizer_examples], args.vocab)
    bos, pad = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    data = Tokens(tok, samples, bos, args.max_len)
    n_tok = int(data.length.sum())
    n_loss = int((data.length - data.prompt_len).sum())
    log(
        f"tokenizer {tok.get_vocab_size()} ids; {len(data)} samples, {n_tok / len(data):.0f} tokens each on "
        f"average, {n_loss / n_tok:.1%} of them trained ({time.time() - t0:.0f} s)"
    )

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        log(f"device: {torch.cuda.get_device_name(device)}")
    model = make_model(tok.get_vocab_size(), args.seed)
    if args.init:
        from interndeploy.testing.tiny_models import hf_reference_model

        # the exported lm_head is a copy of the (tied) embedding: load it once
        state = {k: v for k, v in hf_reference_model(Path(args.init)).state_dict().items() if k != "lm_head.weight"}
        model.load_state_dict(state, strict=False)
        log(f"initialised from {args.init}")
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f} M parameters, {MODEL_SHAPE}")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=device.type == "cuda",
    )
    rng = random.Random(args.seed)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    step, epoch, t_train, ema = 0, 0, time.time(), None
    time_limit = min(args.time_limit, args.deadline - (t_train - t0))  # leave time to export and evaluate
    log(f"training for {args.steps} steps or {time_limit:.0f} s, whichever comes first")
    model.train()
    while step < args.steps:
        epoch += 1
        for idx in data.batches(args.batch_tokens, rng):
            if step >= args.steps:
                break
            progress = max(step / args.steps, (time.time() - t_train) / time_limit)
            if progress >= 1:
                log(f"time limit reached at step {step}: stopping early")
                args.steps = step
                break
            warm = min(1.0, (step + 1) / args.warmup)
            lr = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
            for g in opt.param_groups:
                g["lr"] = lr
            batch = [_to(t, device) for t in data.collate(idx, pad, with_prompt=args.prompt_loss_weight > 0)]
            with amp:
                loss, completion_loss = loss_of(model, *batch, args.prompt_loss_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step % args.log_every == 0 or step == 1:
                value = completion_loss.item()
                ema = value if ema is None else 0.9 * ema + 0.1 * value
                log(
                    f"step {step}/{args.steps} epoch {epoch} loss {value:.4f} (ema {ema:.4f}) lr {lr:.2e} "
                    f"batch {len(idx)}x{batch[0].shape[1]} {time.time() - t_train:.0f} s"
                )
    log(f"trained {step} steps in {time.time() - t_train:.0f} s")
    export(model, out, tok)
    log(f"wrote {out}: " + ", ".join(f"{p.name} {p.stat().st_size / 1e6:.2f} MB" for p in sorted(out.iterdir())))
    if args.eval:
        try:
            evaluate_dir(out, device, args.eval)
        except Exception:  # the model is written: report, do not lose it
            import traceback

            traceback.print_exc()


# ---------------------------------------------------------------- held-out evaluation (transformers)


def hf_generator(model_dir: Path, device: torch.device, max_new_tokens: int = 256, batch: int = 64):  # noqa: ANN201
    """A `evaluate.Generator` over the exported directory read back by the transformers reference (greedy)."""
    from tokenizers import Tokenizer

    from interndeploy.testing.tiny_models import hf_reference_model

    model = hf_reference_model(model_dir).to(device)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    bos, pad = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    stops = [tok.token_to_id(t) for t in ("</s>", "<|im_end|>", "<|action_end|>")]

    def generate(reqs: list) -> list[str]:  # noqa: ANN001
        prompts = []
        for r in reqs:
            text = corpus.template(r.template).render(
                r.messages, tools=r.tools, enable_thinking=r.enable_thinking, bos_token="<s>"
            )
            ids = tok.encode(text, add_special_tokens=False).ids
            prompts.append(ids if ids[:1] == [bos] else [bos, *ids])
        texts = [""] * len(reqs)
        order = sorted(range(len(reqs)), key=lambda i: len(prompts[i]))
        for k in range(0, len(order), batch):
            part = order[k : k + batch]
            width = max(len(prompts[i]) for i in part)
            ids = torch.full((len(part), width), pad, dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for row, i in enumerate(part):  # left padding
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            with torch.no_grad():
                gen = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=stops,
                    pad_token_id=pad,
                )
            for row, i in enumerate(part):
                new = gen[row, width:].tolist()
                cut = next((j for j, t in enumerate(new) if t in stops), len(new))
                texts[i] = tok.decode(new[:cut], skip_special_tokens=False)
        return texts

    return generate


def evaluate_dir(model_dir: Path, device: torch.device, n: int) -> None:
    from interndeploy.demo import evaluate

    generate = hf_generator(model_dir, device)
    t = time.time()
    for fmt in corpus.FORMATS:
        acc, failures = evaluate.tool_call_accuracy(generate, corpus.heldout_tool_calls(n, fmt))
        log(f"held-out tool calls, {fmt}: {acc:.3f} on {n}")
        for ex, text in failures[:4]:
            log(f"  miss: expected {json.dumps(ex.expect, ensure_ascii=False)} got {text!r}")
    for style in ("tool", "environment"):
        acc, _ = evaluate.chain_accuracy(generate, corpus.heldout_chains(max(20, n // 4)), style)
        log(f"held-out add-then-mul chains ({style} results): {acc:.3f} on {max(20, n // 4)}")
    log(f"evaluation took {time.time() - t:.0f} s")


def _families(text: str) -> dict[str, float]:
    try:
        return {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected family=weight,... got {text!r}") from e


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train the InternDeploy demo model (see the module docstring).")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--examples", type=int, default=400_000, help="synthetic conversations to draw")
    p.add_argument("--tokenizer-examples", type=int, default=30_000, help="how many of them train the BPE")
    p.add_argument("--vocab", type=int, default=3072)
    p.add_argument("--batch-tokens", type=int, default=65_536, help="padded tokens per batch")
    p.add_argument("--max-len", type=int, default=1536)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--prompt-loss-weight", type=float, default=0.25, help="weight of the loss on prompt tokens")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", help="continue training this model directory (its tokenizer and weights)")
    p.add_argument(
        "--families",
        type=_families,
        help=f"corpus mix as family=weight,... (default {','.join(f'{k}={v:g}' for k, v in corpus.FAMILIES.items())})",
    )
    p.add_argument("--workers", type=int, default=min(16, multiprocessing.cpu_count()))
    p.add_argument("--time-limit", type=float, default=1e9, help="seconds of training before stopping early")
    p.add_argument("--deadline", type=float, default=1e9, help="seconds from start by which training stops")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval", type=int, default=200, help="held-out prompts per format to evaluate (0: none)")
    p.add_argument(
        "--recipe",
        action="store_true",
        help="the shipped model's three runs in a row into --out (SHIPPED_RECIPE; other flags apply to every run)",
    )
    args = p.parse_args(argv)
    if not args.recipe:
        train(args)
        return 0
    for k, run in enumerate(SHIPPED_RECIPE):
        log(f"recipe run {k + 1} of {len(SHIPPED_RECIPE)}: {run}")
        extra = ["--init", args.out] if k else []
        train(p.parse_args([*(argv if argv is not None else sys.argv[1:]), *extra, *run]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
