"""Streaming: compute per block for each stage and for the whole chain, on CPU and GPU.

    .venv/bin/python benchmarks/streaming.py [--seconds 20] [--blocks 1024,4096,8192]
        [--devices cpu,cuda] [--batch 1]

The parameters come from an analysis pass (``chain(x, ...)``), as in ``Chain.stream``; each
stage then processes its own input (the offline chain's signal before it) block by block with
its state carried, the way a stream feeds it. Printed per device and block size: median and
99th-percentile milliseconds per block for each stage (DC removal counts as ``dc``) and for
their sum, the block's real-time budget (its duration), and each stage's look-ahead. CPU rows
use one thread; GPU steps are synchronized. The issue's goal on a GPU: well under 10 ms per
stage per block.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mastering import SAMPLE_RATE
from mastering.chain import Chain, remove_dc
from mastering.conditioning import Conditioning
from mastering.testsignals import music_like


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stage_inputs(chain: Chain, x: torch.Tensor, cond) -> tuple[dict, dict]:
    """Each stage's input signal in the offline chain, and the analysed parameters."""
    with torch.no_grad():
        state = chain.begin(x, cond)
        inputs = {}
        for name in chain.config.order:
            inputs[name] = state.audio
            state = chain.run_stages(state, [name])
    return inputs, state.params


def time_blocks(fn, signal: torch.Tensor, block: int, sync) -> list[float]:
    """Seconds per block of ``fn(block, state) -> state`` over ``signal``, after one block
    of warm-up."""
    state, times = None, []
    n = signal.shape[-1]
    for i, start in enumerate(range(0, n - block + 1, block)):
        chunk = signal[..., start : start + block]
        sync()
        t0 = time.perf_counter()
        state = fn(chunk, state)
        sync()
        if i:
            times.append(time.perf_counter() - t0)
    return times


def run(device: str, seconds: float, blocks: list[int], batch: int) -> None:
    cuda = device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    chain = Chain.pretrained().eval().to(device)
    x = music_like(seconds, seed=11).float().unsqueeze(0).expand(batch, -1, -1).contiguous()
    x = x.to(device)
    cond = Conditioning(genre="pop", tempo_bpm=120.0, energy=0.6, vocal_ratio=0.3)
    inputs, params = stage_inputs(chain, x, cond)
    names = list(chain.config.order)
    print(f"\n{device}, batch {batch}, {seconds:.0f} s song; ms per block (median / p99)")
    header = f"{'block':>6} {'budget ms':>9} " + " ".join(f"{n:>15}" for n in ["dc", *names])
    print(header + f" {'sum of medians':>15}")
    with torch.no_grad():
        for block in blocks:
            rows = {"dc": time_blocks(lambda b, s: remove_dc(b, s)[1], x, block, sync)}
            for name in names:
                stage, p = chain.stages[name], params[name]
                rows[name] = time_blocks(
                    lambda b, s, st=stage, pp=p: st.process(b, pp, s)[1],
                    inputs[name],
                    block,
                    sync,
                )
            cells = [
                f"{1000 * statistics.median(v):6.2f} / {1000 * percentile(v, 0.99):6.2f}"
                for v in rows.values()
            ]
            total = sum(statistics.median(v) for v in rows.values())
            budget = 1000 * block / SAMPLE_RATE
            print(
                f"{block:>6} {budget:>9.1f} "
                + " ".join(f"{c:>15}" for c in cells)
                + f" {1000 * total:>15.2f}"
            )
    lat = {n: chain.stages[n].latency(params[n]) for n in names}
    print("look-ahead, samples: " + ", ".join(f"{n} {v}" for n, v in lat.items()))
    print(f"whole chain look-ahead: {sum(lat.values())} samples")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--blocks", default="1024,4096,8192")
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    blocks = [int(b) for b in args.blocks.split(",")]
    for device in args.devices.split(","):
        if device == "cuda" and not torch.cuda.is_available():
            print("\ncuda: not available here")
            continue
        run(device, args.seconds, blocks, args.batch)


if __name__ == "__main__":
    main()
