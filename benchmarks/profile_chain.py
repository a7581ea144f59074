"""Where the chain's GPU time goes: per stage, the wall time, the kernel time, the number of
kernel launches and the heaviest operators, at each batch size.

    .venv/bin/python benchmarks/profile_chain.py [--seconds 180] [--batches 1,8] [--top 8]
        [--stacks exciter,master_out]

Runs on CUDA when present (else on CPU, where "kernels" are CPU operators). Each stage runs
once as a warm-up and once under ``torch.profiler``; the table lists the operators by their
self device time, so a launch-bound stage (many short kernels) and a bandwidth-bound one (a
few long ones) tell themselves apart. ``--stacks`` adds, for the stages named, the heaviest
operators grouped by the source line that issued them.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from mastering.chain import Chain
from mastering.conditioning import Conditioning
from mastering.testsignals import music_like


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _step(chain: Chain, name: str, state, x, cond):
    return chain.begin(x, cond) if name == "begin" else chain.run_stages(state, [name])


def _by_source(prof, top: int, cuda: bool) -> list[str]:
    """The heaviest operators grouped by the innermost ``mastering/`` Python frame that issued
    them (walked up the recorded Python call events)."""
    totals: dict[str, float] = {}
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        parent, where = e.cpu_parent, "?"
        while parent is not None:
            if parent.name.startswith("aten::"):
                break  # counted with the outer operator
            if "mastering/" in parent.name:
                where = parent.name.split("mastering/")[-1]
                break
            parent = parent.cpu_parent
        if parent is not None and parent.name.startswith("aten::"):
            continue
        t = e.device_time_total if cuda else e.cpu_time_total
        name = f"{where} {e.name[6:]}"
        totals[name] = totals.get(name, 0.0) + t / 1000
    rows = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return [f"    {ms:8.2f} ms  {name}" for name, ms in rows]


def profile_batch(chain: Chain, x, cond, top: int, stacks: set[str] = frozenset()) -> None:
    cuda = x.is_cuda
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    names = ["begin", *chain.config.order]
    with torch.no_grad():
        state = None
        for name in names:  # warm-up pass
            state = _step(chain, name, state, x, cond)
        state = None
        print(f"\nbatch {x.shape[0]}, {x.shape[-1] / 48_000:.0f} s songs")
        print(f"{'stage':<12} {'wall ms':>9} {'kernel ms':>10} {'launches':>9}")
        details = []
        sources = []
        for name in names:
            _sync()
            with profile(activities=acts, with_stack=name in stacks) as prof:
                t = time.perf_counter()
                state = _step(chain, name, state, x, cond)
                _sync()
                wall = time.perf_counter() - t
            events = prof.key_averages()
            if cuda:
                kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
                kernel_ms = sum(e.device_time for e in kernels) / 1000
                launches = len(kernels)
                by = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)
                key = "self_device_time_total"
            else:
                kernel_ms = sum(e.self_cpu_time_total for e in events) / 1000
                launches = sum(e.count for e in events)
                by = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
                key = "self_cpu_time_total"
            print(f"{name:<12} {1000 * wall:>9.1f} {kernel_ms:>10.1f} {launches:>9}")
            ops = [e for e in by if e.key.startswith("aten::")][:top]  # operators, not kernels
            details.append((name, [(e.key[6:], getattr(e, key) / 1000, e.count) for e in ops]))
            if name in stacks:
                sources.append((name, _by_source(prof, 3 * top, cuda)))
        for name, rows in details:
            print(f"  {name}: " + "; ".join(f"{k} {ms:.1f} ms x{n}" for k, ms, n in rows))
        for name, lines in sources:
            print(f"  {name} by source line:")
            print("\n".join(lines))
    if "master_out" in chain.stages:
        its = [s.get("iterations") for s in chain.stages["master_out"].status()]
        print(f"master_out renderings per song: {its}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--stacks", default="", help="stages to break down by source line")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    song = music_like(args.seconds, seed=7).float().to(device)
    cond = Conditioning(genre="pop", tempo_bpm=120.0, energy=0.6, vocal_ratio=0.3)
    chain = Chain.pretrained().eval().to(device)
    for b in (int(v) for v in args.batches.split(",")):
        x = song.unsqueeze(0).expand(b, -1, -1).contiguous()
        profile_batch(chain, x, cond, args.top, set(filter(None, args.stacks.split(","))))


if __name__ == "__main__":
    main()
