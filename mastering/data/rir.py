"""A bank of stereo room impulse responses simulated with pyroomacoustics, with measured RT60
labels, for the reverb stage's IR-matching loss. Generated once, offline.

Each IR: a shoebox room whose wall absorption and image-source order come from Sabine's
formula for a target RT60 (:func:`pyroomacoustics.inverse_sabine`), simulated with the hybrid
image-source + ray-tracing model and air absorption at 48 kHz, heard by two omni microphones
20 cm apart (a spaced stereo pair) from a source 1.5-6 m away. The IR is trimmed to start 1 ms
before the first arrival, cut where both channels have decayed below -80 dB of their peak,
normalized to unit energy per channel (``sum(L^2 + R^2) / 2 = 1``, the convention of
:mod:`mastering.dsp.ir`) and written as 32-bit float WAV. ``rir.parquet`` holds the labels:
target and measured RT60 (pyroomacoustics' Schroeder-decay fit, T30 extrapolated to 60 dB,
averaged over the channels), room size, absorption, distances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mastering import SAMPLE_RATE
from mastering.data.pairs import write_table
from mastering.errors import LacquerError
from mastering.io import write_audio


class RirError(LacquerError):
    """An impulse response could not be simulated."""


@dataclass(frozen=True)
class RirBankConfig:
    """What to simulate.

    Attributes:
        n: number of IRs. seed: generator seed.
        rt60_s: (min, max) target RT60 in seconds, drawn log-uniformly.
        max_order: cap on the image-source order (ray tracing covers the late tail).
        mic_spacing_m: distance between the two microphones in metres.
        n_rays: rays of the ray tracer (fewer: faster, noisier tails).
    """

    n: int = 24
    seed: int = 0
    rt60_s: tuple[float, float] = (0.3, 2.5)
    max_order: int = 12
    mic_spacing_m: float = 0.2
    n_rays: int = 3000


def _room_for(rt60: float, rng: np.random.Generator) -> tuple[list[float], float, int]:
    """Room size (m), energy absorption and image order for ``rt60`` (larger rooms for longer
    reverbs; redrawn until Sabine's formula gives an absorption below 1)."""
    import pyroomacoustics as pra

    for _ in range(50):
        scale = 3.0 + 6.0 * rt60 * rng.uniform(0.7, 1.3)
        dims = [
            scale * rng.uniform(1.0, 1.6),
            scale * rng.uniform(0.7, 1.1),
            min(3.0 + scale * rng.uniform(0.2, 0.4), 15.0),
        ]
        try:
            e_abs, order = pra.inverse_sabine(rt60, dims)
        except ValueError:
            continue
        if 0.0 < e_abs < 1.0:
            return dims, float(e_abs), int(order)
    raise RirError(f"no shoebox room found for RT60 {rt60:.2f} s")


def simulate_rir(rt60: float, config: RirBankConfig, rng: np.random.Generator) -> tuple:
    """One stereo IR ``[2, T]`` (float32, unit energy per channel) and its label dict."""
    import pyroomacoustics as pra

    dims, e_abs, order = _room_for(rt60, rng)
    room = pra.ShoeBox(
        dims,
        fs=SAMPLE_RATE,
        materials=pra.Material(e_abs),
        max_order=min(order, config.max_order),
        air_absorption=True,
        ray_tracing=True,
    )
    room.set_ray_tracing(n_rays=config.n_rays, receiver_radius=0.5, energy_thres=1e-7)
    margin = 1.0
    centre = np.array([rng.uniform(margin, d - margin) for d in dims])
    centre[2] = min(1.6, dims[2] - margin)
    half = config.mic_spacing_m / 2.0
    offset = np.array([half, 0.0, 0.0])
    mics = np.stack([centre - offset, centre + offset], axis=1)
    room.add_microphone_array(mics)
    for _ in range(100):  # a source 1.5-6 m away inside the room
        angle = rng.uniform(0, 2 * math.pi)
        dist = rng.uniform(1.5, 6.0)
        step = np.array([dist * math.cos(angle), dist * math.sin(angle), rng.uniform(-0.3, 0.3)])
        src = centre + step
        if all(margin / 2 < s < d - margin / 2 for s, d in zip(src, dims, strict=True)):
            break
    else:
        raise RirError(f"no source position in a {dims} m room")
    room.add_source(src.tolist())
    room.compute_rir()
    chans = [np.asarray(room.rir[m][0], dtype=np.float64) for m in range(2)]
    length = max(len(c) for c in chans)
    ir = np.zeros((2, length))
    for m, c in enumerate(chans):
        ir[m, : len(c)] = c
    measured = [
        float(pra.experimental.measure_rt60(ir[m], fs=SAMPLE_RATE, decay_db=30)) for m in (0, 1)
    ]
    env = np.abs(ir).max(0)
    onset = int(np.argmax(env > env.max() * 0.1))
    start = max(0, onset - round(0.001 * SAMPLE_RATE))
    above = np.nonzero(env > env.max() * 1e-4)[0]
    ir = ir[:, start : int(above[-1]) + 1]
    ir = ir / np.sqrt((ir**2).sum(-1, keepdims=True) + 1e-30)
    label = {
        "target_rt60_s": float(rt60),
        "measured_rt60_s": float(np.mean(measured)),
        "measured_rt60_left_s": measured[0],
        "measured_rt60_right_s": measured[1],
        "room_x_m": dims[0],
        "room_y_m": dims[1],
        "room_z_m": dims[2],
        "absorption": e_abs,
        "max_order": min(order, config.max_order),
        "source_distance_m": float(dist),
        "predelay_ms": 1000.0 * onset / SAMPLE_RATE,
        "length_s": ir.shape[-1] / SAMPLE_RATE,
    }
    return torch.from_numpy(ir.astype(np.float32)), label


def generate_rir_bank(config: RirBankConfig, out: str | Path) -> list[dict]:
    """Simulate ``config.n`` IRs into ``out/`` (``rir_00.wav`` ..., ``rir.parquet``).

    Target RT60s are spread log-uniformly over ``config.rt60_s`` (stratified, so a small bank
    covers the range). Returns the label rows.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(config.seed), 60])
    lo, hi = (math.log(v) for v in config.rt60_s)
    strata = (np.arange(config.n) + rng.uniform(size=config.n)) / max(config.n, 1)
    rows = []
    for i, u in enumerate(rng.permutation(strata)):
        rt60 = math.exp(lo + float(u) * (hi - lo))
        ir, label = simulate_rir(rt60, config, rng)
        path = write_audio(out / f"rir_{i:02d}.wav", ir, format="wav32f")
        rows.append({"ir_id": f"rir_{i:02d}", "path": path.name, "seed": config.seed, **label})
    write_table(rows, out / "rir.parquet", list(rows[0]) if rows else ["ir_id"])
    return rows
