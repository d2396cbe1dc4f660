from __future__ import annotations

import numpy as np
import pytest
import torch

from interndeploy.engine.sampling_params import SamplingParams
from interndeploy.worker.sampler import Sampler, SamplingBatch, derive_seed

CPU = torch.device("cpu")
NEG_INF = float("-inf")


def build(
    params: list[SamplingParams],
    outputs: list[list[int]] | None = None,
    prompts: list[list[int]] | None = None,
) -> SamplingBatch:
    outputs = outputs if outputs is not None else [[] for _ in params]
    prompts = prompts if prompts is not None else [[] for _ in params]
    return SamplingBatch.build(params, outputs, prompts, CPU)


def sample(logits: torch.Tensor, params: list[SamplingParams], seed: int = 0, **kw) -> torch.Tensor:
    sampler = Sampler(generator=torch.Generator().manual_seed(seed))
    return sampler(logits, build(params, **kw)).token_ids


def chi_square(tokens: torch.Tensor, expected_probs: torch.Tensor) -> float:
    observed = torch.bincount(tokens, minlength=expected_probs.numel()).double()
    expected = expected_probs.double() * tokens.numel()
    keep = expected > 0
    assert observed[~keep].sum() == 0, "sampled a token of probability 0"
    return float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())


# ---------------------------------------------------------------- greedy


def test_greedy_equals_argmax_and_leaves_logits_alone():
    torch.manual_seed(0)
    logits = torch.randn(8, 100)
    logits[3, 10] = logits[3, 20] = logits[3].max() + 1  # tie: argmax takes the lower id
    before = logits.clone()
    out = Sampler()(logits, build([SamplingParams(temperature=0.0)] * 8))
    assert torch.equal(out.token_ids, logits.argmax(-1))
    assert out.token_ids.dtype == torch.int64
    assert out.logprobs is None and out.top_logprob_ids is None and out.top_logprobs is None
    assert torch.equal(logits, before)


def test_mixed_batch_greedy_rows_take_argmax():
    torch.manual_seed(1)
    logits = torch.randn(6, 50)
    params = [SamplingParams(temperature=0.0 if i % 2 else 1.5, top_k=10 * (i % 3)) for i in range(6)]
    batch = build(params)
    assert not batch.all_greedy and not batch.all_random and batch.random_rows is not None
    for seed in range(5):
        tokens = sample(logits, params, seed=seed)
        assert torch.equal(tokens[1::2], logits[1::2].argmax(-1))


def test_empty_batch():
    out = Sampler()(torch.zeros(0, 10), build([]))
    assert out.token_ids.shape == (0,)


# ---------------------------------------------------------------- bans


def test_min_new_tokens_bans_stop_tokens():
    logits = torch.zeros(1, 10)
    logits[0, 2] = 5.0  # eos would win
    logits[0, 7] = 4.0
    p = SamplingParams(temperature=0.0, min_new_tokens=3, stop_token_ids=[2, 9])
    assert sample(logits, [p], outputs=[[1, 1]]).item() == 7
    assert sample(logits, [p], outputs=[[1, 1, 1]]).item() == 2
    ignore = SamplingParams(temperature=0.0, min_new_tokens=3, stop_token_ids=[2], ignore_eos=True)
    assert sample(logits, [ignore], outputs=[[]]).item() == 2
    # Sampled rows are banned too.
    hot = SamplingParams(temperature=1.0, min_new_tokens=1, stop_token_ids=[2])
    assert (sample(logits.expand(500, 10), [hot] * 500) != 2).all()


def test_bad_words():
    logits = torch.arange(10.0).flip(0).unsqueeze(0)  # token 0 is best, then 1, 2, ...
    p = SamplingParams(temperature=0.0, bad_word_ids=[[0], [5, 1], [3, 4, 1]])
    assert sample(logits, [p], outputs=[[]]).item() == 1  # single-token word always banned
    assert sample(logits, [p], outputs=[[7, 5]]).item() == 2  # output ends with [5] -> 1 banned
    assert sample(logits, [p], outputs=[[5, 7]]).item() == 1
    assert sample(logits, [p], outputs=[[7, 3, 4]]).item() == 2  # ends with [3, 4] -> 1 banned
    assert sample(logits, [p], outputs=[[3, 7, 4]]).item() == 1
    assert sample(logits, [p], outputs=[[4]]).item() == 1  # output shorter than the prefix
    # The prefix must be in the output, not straddle the prompt.
    assert sample(logits, [p], outputs=[[]], prompts=[[5]]).item() == 1


def test_ban_ids_past_vocab_are_ignored():
    logits = torch.zeros(2, 4)
    logits[:, 3] = 1.0
    p = SamplingParams(temperature=0.0, min_new_tokens=1, stop_token_ids=[3, 100], bad_word_ids=[[4]])
    tokens = sample(logits, [p, SamplingParams(temperature=0.0, bad_word_ids=[[50]])])
    assert tokens.tolist() == [0, 3]


# ---------------------------------------------------------------- penalties


def test_repetition_penalty_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0]])
    p = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    batch = build([p], outputs=[[3, 3]], prompts=[[1, 2]])
    got = Sampler().process_logits(logits, batch)
    assert torch.allclose(got, torch.tensor([[2.0, -2.0, 0.25, 1.5, -2.0]]))
    assert Sampler()(logits, batch).token_ids.item() == 0


def test_repetition_penalty_matches_hf():
    logits_process = pytest.importorskip("transformers.generation.logits_process")
    torch.manual_seed(2)
    logits = torch.randn(3, 40)
    prompts = [[1, 5, 5, 7], [0, 39], [2]]
    outputs = [[7, 8], [], [3, 3, 3]]
    params = [SamplingParams(temperature=0.0, repetition_penalty=r) for r in (1.3, 0.8, 1.0)]
    got = Sampler().process_logits(logits, build(params, outputs=outputs, prompts=prompts))
    for i, r in enumerate((1.3, 0.8, 1.0)):
        ids = torch.tensor([prompts[i] + outputs[i]])
        want = logits_process.RepetitionPenaltyLogitsProcessor(penalty=r)(ids, logits[i : i + 1].clone())
        assert torch.allclose(got[i], want[0])
    # Prompts kept as int64 arrays give the same result.
    arrays = [np.asarray(x, dtype=np.int64) for x in prompts]
    assert torch.equal(Sampler().process_logits(logits, build(params, outputs=outputs, prompts=arrays)), got)


def test_presence_and_frequency_penalties():
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    params = [
        SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.25),
        SamplingParams(temperature=0.0),
    ]
    outputs = [[1, 2, 2, 2], [1, 1]]
    # Prompt tokens do not count for presence/frequency.
    got = Sampler().process_logits(logits, build(params, outputs=outputs, prompts=[[0, 3], [0]]))
    assert torch.allclose(got[0], torch.tensor([1.0, 1.0 - 0.5 - 0.25, 1.0 - 0.5 - 0.75, 1.0]))
    assert torch.equal(got[1], logits[1])


def test_penalty_order_bans_then_repetition_then_presence():
    logits = torch.tensor([[4.0, 2.0, -1.0]])
    p = SamplingParams(temperature=0.0, repetition_penalty=2.0, presence_penalty=1.0, bad_word_ids=[[0]])
    got = Sampler().process_logits(logits, build([p], outputs=[[1, 2]], prompts=[[0]]))
    assert torch.allclose(got, torch.tensor([[NEG_INF, 2.0 / 2 - 1, -1.0 * 2 - 1]]))


# ---------------------------------------------------------------- filters


def test_top_k_1_and_tiny_top_p_equal_greedy():
    torch.manual_seed(3)
    logits = torch.randn(64, 200) * 3
    logits[5, 7] = logits[5, 9] = logits[5].max() + 1  # ties: filters keep the lower id, like argmax
    want = logits.argmax(-1)
    for seed in range(3):
        assert torch.equal(sample(logits, [SamplingParams(temperature=2.0, top_k=1)] * 64, seed=seed), want)
        assert torch.equal(sample(logits, [SamplingParams(temperature=2.0, top_p=1e-6)] * 64, seed=seed), want)


def test_top_k_and_top_p_never_sample_outside_allowed_set():
    torch.manual_seed(4)
    n, vocab = 2000, 30
    row = torch.randn(vocab) * 2
    logits = row.expand(n, vocab)
    ranked = row.argsort(descending=True)

    tokens = sample(logits, [SamplingParams(top_k=5)] * n)
    assert set(tokens.tolist()) == set(ranked[:5].tolist())

    probs = row.softmax(-1)[ranked]
    size = int((probs.cumsum(0) < 0.6).sum()) + 1  # smallest prefix reaching 0.6
    tokens = sample(logits, [SamplingParams(top_p=0.6)] * n)
    assert set(tokens.tolist()) == set(ranked[:size].tolist())

    tokens = sample(logits, [SamplingParams(top_k=3, top_p=0.99, temperature=0.7)] * n)
    assert set(tokens.tolist()) <= set(ranked[:3].tolist())


def test_min_p_filtering():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.04, 0.01])
    logits = probs.log().expand(3000, 5)
    tokens = sample(logits, [SamplingParams(min_p=0.2)] * 3000)  # drops prob < 0.1
    assert set(tokens.tolist()) == {0, 1, 2}
    kept = torch.tensor([0.5, 0.3, 0.15, 0.0, 0.0])
    assert chi_square(tokens, kept / kept.sum()) < 25.0


# ---------------------------------------------------------------- distribution


LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])


def test_unseeded_distribution_matches_softmax():
    n, temp = 20000, 0.8
    tokens = sample(LOGITS.expand(n, 6), [SamplingParams(temperature=temp)] * n, seed=1234)
    # df = 5; 30 is past the 99.99th percentile, and the fixed seeds make the test deterministic.
    assert chi_square(tokens, (LOGITS / temp).softmax(-1)) < 30.0


def test_seeded_distribution_matches_softmax():
    n, temp = 4000, 1.3
    tokens = sample(LOGITS.expand(n, 6), [SamplingParams(temperature=temp, seed=s) for s in range(n)])
    assert chi_square(tokens, (LOGITS / temp).softmax(-1)) < 30.0


def test_top_k_top_p_distribution_is_renormalised():
    n = 20000
    tokens = sample(LOGITS.expand(n, 6), [SamplingParams(top_k=4, top_p=0.85)] * n, seed=7)
    # top-4 probs renormalised: ~[.49, .18, .11, .07] / .85 -> cumulative before token 2 is ~.80 < .85,
    # before token 3 ~.93 >= .85: the nucleus is tokens 0..2.
    p = LOGITS[:4].softmax(-1)
    assert p[:2].sum() < 0.85 <= p[:3].sum()
    want = torch.zeros(6)
    want[:3] = p[:3] / p[:3].sum()
    assert chi_square(tokens, want) < 25.0


# ---------------------------------------------------------------- seeding


def _seeded_run(arrangement: str, steps: int = 6) -> list[int]:
    """Sample a seeded row over several steps inside differently composed batches."""
    vocab = 300
    target = SamplingParams(temperature=1.0, top_k=50, repetition_penalty=1.2, seed=42)
    gen = torch.Generator().manual_seed(99)
    base = torch.randn(vocab, generator=gen) * 2
    history: list[int] = []
    noise_gen = torch.Generator().manual_seed({"alone": 1, "first": 2, "middle": 3}[arrangement])
    for step in range(steps):
        row = base + 0.1 * step
        if arrangement == "alone":
            params, pos, others = [target], 0, 0
        elif arrangement == "first":
            params, pos, others = [target, SamplingParams(), SamplingParams(top_p=0.9)], 0, 2
        else:
            params = [
                SamplingParams(temperature=0.0),
                SamplingParams(min_p=0.1),
                SamplingParams(seed=7, presence_penalty=0.5),
                target,
                SamplingParams(),
            ]
            pos, others = 3, 4
        logits = torch.randn(others + 1, vocab, generator=noise_gen) * 2
        logits[pos] = row
        outputs = [[] for _ in params]
        outputs[pos] = list(history)
        prompts = [[1, 2, 3] for _ in params]
        batch = SamplingBatch.build(params, outputs, prompts, CPU)
        sampler = Sampler(generator=torch.Generator().manual_seed(step + 100 * len(params)))
        history.append(int(sampler(logits, batch).token_ids[pos]))
    return history


def test_same_seed_same_tokens_whatever_the_batch():
    alone = _seeded_run("alone")
    assert _seeded_run("first") == alone
    assert _seeded_run("middle") == alone
    assert len(set(alone)) > 1  # the step feeds the seed: draws differ between steps


def test_different_seeds_differ():
    logits = torch.zeros(1, 1000)
    runs = []
    for seed in (1, 2):
        tokens = []
        for step in range(10):
            batch = build([SamplingParams(seed=seed)], outputs=[[0] * step])
            tokens.append(int(Sampler()(logits, batch).token_ids[0]))
        runs.append(tokens)
    assert runs[0] != runs[1]


def test_seeded_rows_ignore_global_rng():
    logits = torch.randn(1, 500, generator=torch.Generator().manual_seed(5))
    batch = build([SamplingParams(seed=3)])
    torch.manual_seed(0)
    a = Sampler()(logits, batch).token_ids
    torch.manual_seed(1)
    b = Sampler()(logits, batch).token_ids
    assert torch.equal(a, b)
    assert derive_seed(3, 0) != derive_seed(3, 1) != derive_seed(4, 0)
    assert 0 <= derive_seed(-1, 2**40) < 2**63


# ---------------------------------------------------------------- logprobs


def test_logprobs_are_raw_log_softmax_with_sorted_top_n():
    torch.manual_seed(6)
    logits = torch.randn(4, 50)
    params = [
        SamplingParams(logprobs=3, temperature=0.7, bad_word_ids=[[int(logits[0].argmax())]]),
        SamplingParams(logprobs=0, temperature=0.0, repetition_penalty=1.5),
        SamplingParams(logprobs=None, top_k=5),
        SamplingParams(logprobs=5, temperature=0.0, presence_penalty=2.0),
    ]
    batch = build(params, outputs=[[1], [1, 2], [], [3]], prompts=[[4]] * 4)
    assert batch.max_logprobs == 5
    out = Sampler()(logits, batch)
    raw = logits.log_softmax(-1)  # before bans, penalties and temperature
    assert torch.allclose(out.logprobs, raw.gather(1, out.token_ids[:, None]).squeeze(1))
    assert out.top_logprob_ids.shape == out.top_logprobs.shape == (4, 5)
    assert torch.equal(out.top_logprob_ids, raw.topk(5, dim=-1).indices)
    assert torch.allclose(out.top_logprobs, raw.gather(1, out.top_logprob_ids))
    assert (out.top_logprobs[:, :-1] >= out.top_logprobs[:, 1:]).all()
    assert out.token_ids[0] != logits[0].argmax()  # banned, yet its logprob is still reported raw


def test_logprobs_zero_returns_sampled_logprob_only():
    logits = torch.randn(2, 20)
    out = Sampler()(logits, build([SamplingParams(logprobs=0), SamplingParams(temperature=0.0)]))
    assert out.logprobs is not None and out.logprobs.shape == (2,)
    assert out.top_logprob_ids is None and out.top_logprobs is None


# ---------------------------------------------------------------- batch contract


def test_build_fields_and_flags():
    params = [
        SamplingParams(temperature=0.0, top_k=5),  # filters of greedy rows do not count
        SamplingParams(temperature=0.5, top_p=0.9, seed=11),
        SamplingParams(temperature=1.0, min_p=0.05, frequency_penalty=0.1),
    ]
    batch = build(params, outputs=[[1], [2, 3], [4, 4]])
    assert batch.temperature.dtype == torch.float32 and batch.top_k.dtype == torch.int64
    assert batch.temperature.tolist() == [0.0, 0.5, 1.0]
    assert batch.top_k.tolist() == [5, 0, 0]
    assert batch.steps == [1, 2, 2] and batch.seeds == [None, 11, None]
    assert batch.seeded == [(0, derive_seed(11, 2))]
    assert batch.random_rows.tolist() == [1, 2] and batch.num_unseeded == 1
    assert not batch.any_top_k and batch.any_top_p and batch.any_min_p and batch.any_penalty
    assert batch.output_ids.tolist() == [[2, 2], [4, 4]]
    assert batch.repetition_ids is None and batch.ban_ids is None and batch.max_logprobs is None


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_contract_without_host_sync():
    dev = torch.device("cuda")
    torch.manual_seed(8)
    vocab = 1000
    logits = torch.randn(6, vocab, device=dev) * 3
    params = [
        SamplingParams(temperature=0.0, repetition_penalty=1.3, stop_token_ids=[5], min_new_tokens=4),
        SamplingParams(temperature=0.9, top_k=20, seed=1, logprobs=2),
        SamplingParams(temperature=1.1, top_p=0.8, min_p=0.05, presence_penalty=0.4, frequency_penalty=0.2),
        SamplingParams(temperature=0.7, seed=2, bad_word_ids=[[7], [1, 2]], stop_token_ids=[vocab + 3]),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, top_k=1),
    ]
    outputs = [[1, 2], [3], [4, 4, 9], [1], [], [0]]
    prompts = [[10, 11]] * 6
    batch = SamplingBatch.build(params, outputs, prompts, dev)
    sampler = Sampler()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sampler(logits, batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    processed = sampler.process_logits(logits, batch)
    assert out.token_ids.device.type == "cuda"
    assert out.token_ids[0] == processed[0].argmax() and out.token_ids[4] == logits[4].argmax()
    assert out.token_ids[5] == logits[5].argmax()
    assert out.token_ids[1] in logits[1].topk(20).indices
    assert int(out.token_ids[3]) not in (2, 7)
    raw = logits.log_softmax(-1)
    assert torch.allclose(out.logprobs, raw.gather(1, out.token_ids[:, None]).squeeze(1))
    assert torch.equal(out.top_logprob_ids, raw.topk(2).indices)

    # A seeded row draws the same token alone and at another position of another batch.
    alone = SamplingBatch.build([params[1]], [outputs[1]], [prompts[1]], dev)
    assert sampler(logits[1:2], alone).token_ids[0] == out.token_ids[1]
    moved = [params[4], params[2], params[1]]
    moved_batch = SamplingBatch.build(moved, [[], [], outputs[1]], [prompts[1]] * 3, dev)
    assert sampler(logits[[4, 2, 1]], moved_batch).token_ids[2] == out.token_ids[1]

    # Distribution on the device matches softmax(logits / T).
    n = 20000
    dev_logits = LOGITS.to(dev).expand(n, 6)
    batch = SamplingBatch.build([SamplingParams(temperature=0.8)] * n, [[]] * n, [[]] * n, dev)
    tokens = Sampler()(dev_logits, batch).token_ids
    assert chi_square(tokens.cpu(), (LOGITS / 0.8).softmax(-1)) < 40.0
