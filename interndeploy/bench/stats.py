"""Latency figures with vLLM's definitions, from per-request timestamps."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestTiming:
    start: float  # request sent (s, perf_counter)
    token_times: list[float] = field(default_factory=list)  # arrival of each output chunk (s)
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    ok: bool = True

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.start

    @property
    def e2e(self) -> float:
        return self.token_times[-1] - self.start

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (e2e - ttft) / (output tokens - 1)."""
        if self.num_output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.num_output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(timings: list[RequestTiming], duration: float) -> dict[str, float]:
    done = [t for t in timings if t.ok and t.token_times]
    out = {
        "requests": len(timings),
        "completed": len(done),
        "duration_s": duration,
        "req_per_s": len(done) / duration,
        "input_tok_per_s": sum(t.num_prompt_tokens for t in done) / duration,
        "output_tok_per_s": sum(t.num_output_tokens for t in done) / duration,
    }
    series = {
        "ttft_ms": [t.ttft * 1e3 for t in done],
        "tpot_ms": [t.tpot * 1e3 for t in done if t.tpot is not None],
        "itl_ms": [x * 1e3 for t in done for x in t.itls],
        "e2e_ms": [t.e2e * 1e3 for t in done],
    }
    for name, xs in series.items():
        out[f"{name}_mean"] = statistics.fmean(xs) if xs else float("nan")
        out[f"{name}_p50"] = _pct(xs, 0.5)
        out[f"{name}_p99"] = _pct(xs, 0.99)
    return out


def format_table(title: str, figures: dict[str, float]) -> str:
    lines = [f"== {title} =="]
    for k, v in figures.items():
        lines.append(f"  {k:<18} {v:>12.3f}" if isinstance(v, float) else f"  {k:<18} {v:>12}")
    return "\n".join(lines)
