"""The synchronous engine: one `step()` = schedule -> run -> postprocess -> outputs.

With async scheduling (`EngineConfig.async_scheduling`) a step's tokens are read one call late, so that
the host schedules and builds step n+1 while the device still runs step n:

    step() call n+1:  schedule n+1 -> launch n+1 -> read step n's tokens (waits) -> postprocess n -> outputs
    device:           ....... step n .......|....... step n+1 .......

A sequence sampled by step n is scheduled in n+1 on the assumption that it goes on (its pending token is
taken on the device); if step n's token ends it, n+1's token for it is dropped, and its blocks were freed
when it ended (a later launch is the first that can reuse them). Steps whose sequences need their last
token on the host to sample the next (grammar, penalties) are read back before the next one is scheduled.

Not thread-safe: the AsyncEngine calls it from one thread only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import torch

from ..config import EngineConfig
from ..model_dir import ModelInfo
from ..tokenizer import Tokenizer
from ..worker.async_output import AsyncStepOutput, TokenLogprobs
from ..worker.executor import create_executor
from ..worker.guided_decoding import GrammarBackend
from ..worker.kv_cache import memory_report
from ..worker.model_runner import pick_device
from .block_manager import BlockManager
from .detokenizer import IncrementalDetokenizer
from .request import EngineRequest, RequestOutput
from .scheduler import Scheduler, SchedulerOutput
from .sequence import FinishReason, Sequence

logger = logging.getLogger("interndeploy")

DEFAULT_MAX_BATCH_SIZE = 128  # CPU
# LMDeploy's per-GPU defaults (lmdeploy/utils.py get_max_batch_size): big-memory GPUs batch more
_GPU_MAX_BATCH_SIZE = (("h100", 1024), ("h200", 1024), ("h800", 1024), ("h20", 1024), ("b200", 1024),
                       ("a100", 384), ("a800", 384))


def default_max_batch_size(device: torch.device) -> int:
    """`--max-batch-size` when not given: by GPU model as LMDeploy picks it, 256 on other GPUs, 128 on CPU."""
    if device.type != "cuda":
        return DEFAULT_MAX_BATCH_SIZE
    name = torch.cuda.get_device_name(device).lower()
    return next((size for key, size in _GPU_MAX_BATCH_SIZE if key in name), 256)


@dataclass
class _SampleState:
    """One of a request's n samples: its sequence, detokenizer and what is not yet reported."""

    seq: Sequence
    detok: IncrementalDetokenizer
    index: int
    pending_text: str = ""
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprobs] = field(default_factory=list)
    reported_done: bool = False


@dataclass
class _RequestState:
    req: EngineRequest
    samples: list[_SampleState]


@dataclass(slots=True)
class _InflightStep:
    sched: SchedulerOutput  # what was launched
    output: AsyncStepOutput  # its tokens, on their way to the host


@dataclass(slots=True)
class EngineStats:
    num_finished: int = 0  # requests finished since start
    prompt_tokens: int = 0  # prompt tokens of admitted requests
    generated_tokens: int = 0  # tokens sampled
    num_preemptions: int = 0  # sequences sent back to the queue for lack of blocks
    num_steps: int = 0  # step() calls that launched or completed work
    step_s: float = 0.0  # time inside those calls
    device_wait_s: float = 0.0  # of which waiting for the device's tokens (the rest is host work)


class LLMEngine:
    def __init__(
        self, info: ModelInfo, cfg: EngineConfig, tokenizer: Tokenizer, eos_token_ids: list[int] | None = None
    ) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.session_len = cfg.session_len or info.max_position_embeddings
        self.max_batch_size = cfg.max_batch_size or default_max_batch_size(pick_device(cfg.device))
        # the executor owns the ranks (1 in this process, or tp workers, or one of dp engines); rank 0's runner
        # lives here and holds what the engine asks about: KV spec, device, weights, grammar hook
        self.executor = create_executor(info, cfg, self.session_len, self.max_batch_size)
        self.runner = self.executor.runner
        self.block_manager = BlockManager(self.runner.num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, self.max_batch_size, cfg.max_prefill_token_num)
        self.requests: dict[str, _RequestState] = {}
        self.by_seq: dict[int, tuple[_RequestState, _SampleState]] = {}
        self.stats = EngineStats()
        vocab = int(info.config.get("vocab_size") or tokenizer.vocab_size)
        self.grammar = GrammarBackend(tokenizer, vocab, eos_token_ids or [])
        self.runner.grammar = self.grammar
        self.async_scheduling = self._want_async(cfg)
        self._inflight: _InflightStep | None = None  # the launched step whose tokens are not read yet
        fmt = getattr(self.runner, "weight_format", "hf")
        note = f"{fmt} (quantized linears at their packed size)" if fmt != "hf" else ""
        logger.info(memory_report(self.runner.weight_bytes, self.runner.kv, self.runner.device, note))

    def _want_async(self, cfg: EngineConfig) -> bool:
        # default: on where the device runs apart from the host (CUDA); on the CPU the forward runs inside
        # launch(), so reading a step's tokens one call late would only delay them
        if cfg.async_scheduling is None:
            return self.runner.device.type == "cuda" and self.executor.async_default
        want = cfg.async_scheduling
        if want and not self.executor.supports_async:
            logger.info("async scheduling is not available with --dp; running steps in turn")
            want = False
        return want

    @property
    def has_work(self) -> bool:
        """True when step() has something to do (always for a dp engine: its peers may need it)."""
        return self.scheduler.has_work or self._inflight is not None or self.executor.always_step

    def add_request(self, req: EngineRequest) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request id {req.request_id} is already running")
        max_total = min(self.session_len, len(req.prompt_token_ids) + req.params.max_new_tokens)
        samples = []
        now = time.monotonic()
        for i in range(req.n):
            # the n samples of a seeded request are distinct but each reproducible: seed, seed + 1, ...
            params = req.params if req.params.seed is None or i == 0 else replace(req.params, seed=req.params.seed + i)
            seq = Sequence(list(req.prompt_token_ids), params, max_total_tokens=max_total, arrival_time=now)
            seq.multimodal = req.multimodal
            detok = IncrementalDetokenizer(
                self.tokenizer,
                skip_special_tokens=req.skip_special_tokens,
                spaces_between_special_tokens=req.spaces_between_special_tokens,
                stop_strings=req.stop_strings,
                include_stop_str_in_output=req.include_stop_str_in_output,
            )
            samples.append(_SampleState(seq, detok, i))
        state = _RequestState(req, samples)
        self.requests[req.request_id] = state
        for sample in samples:
            self.by_seq[sample.seq.seq_id] = (state, sample)
            self.scheduler.add(sample.seq)
        self.stats.prompt_tokens += len(req.prompt_token_ids) * req.n

    def abort_request(self, request_id: str) -> list[RequestOutput]:
        state = self.requests.get(request_id)
        if state is None:
            return []
        for sample in state.samples:
            self.scheduler.finish(sample.seq, FinishReason.ABORT)
        return self._collect([state])

    def step(self) -> list[RequestOutput]:
        t0 = time.perf_counter()
        touched: dict[int, _RequestState] = {}
        inflight, self._inflight = self._inflight, None
        if inflight is not None and any(s.needs_host_tokens for s in self._samplers(inflight.sched)):
            self._complete(inflight, touched)  # the next step's sampling needs these tokens on the host
            inflight = None
        sched = self.scheduler.schedule()
        self.stats.num_preemptions += len(sched.preempted)
        for seq in sched.finished:
            self._touch(seq, touched)
        launched = None
        if sched.is_empty and self.executor.always_step:
            self.executor.execute(sched)  # a dp engine's turn with nothing scheduled: its peers may need it
        elif not sched.is_empty:
            launched = _InflightStep(sched, self.executor.launch(sched))
            self.scheduler.on_launched(sched)
        if inflight is not None:  # step n's tokens, read only now that step n+1 is on the device
            self._complete(inflight, touched)
        if launched is not None:
            if self.async_scheduling:
                self._inflight = launched
            else:
                self._complete(launched, touched)
        outputs = self._collect(list(touched.values()))
        if launched is not None or inflight is not None:
            self.stats.num_steps += 1
            self.stats.step_s += time.perf_counter() - t0
        return outputs

    @staticmethod
    def _samplers(sched: SchedulerOutput) -> list[Sequence]:
        return [item.seq for item in sched.scheduled if item.samples]

    def _touch(self, seq: Sequence, touched: dict[int, _RequestState]) -> None:
        entry = self.by_seq.get(seq.seq_id)  # absent once its request is finished and reported
        if entry is not None:
            touched[id(entry[0])] = entry[0]

    def _complete(self, step: _InflightStep, touched: dict[int, _RequestState]) -> None:
        """Read a launched step's tokens (waiting for the device) and apply them."""
        t0 = time.perf_counter()
        result = step.output.get()
        self.stats.device_wait_s += time.perf_counter() - t0
        self.scheduler.update(step.sched, result.sampled)
        self._postprocess(step.sched, result.sampled, result.logprobs)
        for item in step.sched.scheduled:
            self._touch(item.seq, touched)

    def _postprocess(self, sched: SchedulerOutput, sampled: dict[int, int], logprobs: dict) -> None:
        for item in sched.scheduled:
            seq = item.seq
            token = sampled.get(seq.seq_id)
            if token is None or seq.is_finished:
                continue
            self.stats.generated_tokens += 1
            state, sample = self.by_seq[seq.seq_id]
            params = seq.params
            if not params.ignore_eos and token in params.stop_token_ids:
                self.scheduler.finish(seq, FinishReason.STOP)
                continue
            sample.pending_ids.append(token)
            if seq.seq_id in logprobs:
                sample.pending_logprobs.append(logprobs[seq.seq_id])
            sample.pending_text += sample.detok.step([token])
            grammar_done = params.grammar is not None and self.grammar.accept(seq, token)
            if sample.detok.stopped or grammar_done:
                self.scheduler.finish(seq, FinishReason.STOP)
            elif seq.num_output_tokens >= params.max_new_tokens or len(seq) >= seq.max_total_tokens:
                self.scheduler.finish(seq, FinishReason.LENGTH)

    def _collect(self, states: list[_RequestState]) -> list[RequestOutput]:
        """Turn what the touched requests' samples gained into outputs; forget finished requests."""
        outputs = []
        for state in states:
            newly_done = False
            for sample in state.samples:
                if sample.reported_done:
                    continue
                seq = sample.seq
                done = seq.is_finished
                text = sample.pending_text
                if done and not sample.detok.stopped:
                    text += sample.detok.flush()
                if not (text or sample.pending_ids or done):
                    continue
                outputs.append(
                    RequestOutput(
                        request_id=state.req.request_id,
                        index=sample.index,
                        text=text,
                        token_ids=sample.pending_ids,
                        logprobs=sample.pending_logprobs if state.req.params.logprobs is not None else None,
                        num_prompt_tokens=seq.num_prompt_tokens,
                        num_output_tokens=seq.num_output_tokens,
                        num_cached_tokens=seq.num_cached_tokens,
                        finished=done,
                        finish_reason=seq.finish_reason.value if done and seq.finish_reason else None,
                    )
                )
                sample.pending_text, sample.pending_ids, sample.pending_logprobs = "", [], []
                sample.reported_done = done
                newly_done |= done
            if newly_done and all(s.reported_done for s in state.samples):
                del self.requests[state.req.request_id]
                for s in state.samples:
                    self.by_seq.pop(s.seq.seq_id, None)
                self.stats.num_finished += 1
        return outputs

    def fail_all(self, message: str) -> list[RequestOutput]:
        """End every live request with an error (the engine hit an exception mid-step)."""
        outputs = []
        self._inflight = None  # its tokens are not wanted (and the device may be the failure)
        for state in list(self.requests.values()):
            for sample in state.samples:
                self.scheduler.finish(sample.seq, FinishReason.ABORT)
            for out in self._collect([state]):
                out.error = message
                outputs.append(out)
        return outputs

    def shutdown(self) -> None:
        """Stop the executor's workers (tensor-parallel ranks) and leave the process group."""
        self.executor.shutdown()
