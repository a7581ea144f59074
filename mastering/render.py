"""Mastering files: read, master, write atomically, report. Shared by ``lacquer master``, the
render farm's workers and the Serve endpoints, so a song is mastered the same way everywhere.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mastering import features
from mastering.chain import Chain, ChainConfig, ChainOutput
from mastering.conditioning import Conditioning
from mastering.dsp.stereo import side_to_mid_ratio_db
from mastering.errors import InvalidParameterError
from mastering.io import read_audio, write_audio
from mastering.loudness import LoudnessReport, measure_batch

#: Output format name -> file extension.
FORMATS: dict[str, str] = {
    "wav16": "wav",
    "wav24": "wav",
    "wav32f": "wav",
    "flac16": "flac",
    "flac24": "flac",
}


@dataclass
class MasterOptions:
    """Everything that decides how one file is mastered and written.

    Attributes:
        conditioning: what the song is mastered for (unset fields are estimated).
        target_lufs, ceiling_dbtp: loudness target (LUFS) and true-peak ceiling (dBTP).
        format: one of :data:`FORMATS`.
        out_rate: output sample rate in Hz (``None``: the source's rate).
        overrides: ``{stage: {param: value}}`` in physical units.
        bypass: stage names to skip.
        device: ``"cpu"`` or ``"cuda"``.
        reference: path of a reference master to match (:mod:`mastering.reference`), or None.
        match_steps: gradient steps refining the match (:mod:`mastering.matching`); needs a
            reference.
        sections: section-aware conditioning (:mod:`mastering.sections`); off = one setting
            for the whole song.
    """

    conditioning: Conditioning = field(default_factory=Conditioning)
    target_lufs: float = -14.0
    ceiling_dbtp: float = -1.0
    format: str = "wav24"
    out_rate: int | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    bypass: tuple[str, ...] = ()
    device: str = "cpu"
    reference: str | None = None
    match_steps: int = 0
    sections: bool = False

    def validate(self) -> MasterOptions:
        if self.match_steps:
            from mastering.matching import MAX_STEPS

            if not 0 <= self.match_steps <= MAX_STEPS:
                raise InvalidParameterError(f"match steps must be within 0..{MAX_STEPS}")
            if self.reference is None:
                raise InvalidParameterError("match steps need a reference (--reference PATH)")
        if self.format not in FORMATS:
            raise InvalidParameterError(
                f"unknown format {self.format!r}; valid: {', '.join(FORMATS)}"
            )
        self.conditioning.validate()
        self.chain_config()
        return self

    def chain_config(self) -> ChainConfig:
        return ChainConfig(
            target_lufs=self.target_lufs, ceiling_dbtp=self.ceiling_dbtp, bypass=self.bypass
        ).validate()


def summary(
    x: Tensor, reports: Sequence[LoudnessReport] | None = None
) -> list[dict[str, float | None]]:
    """Per-song measurements of ``x [batch, 2, samples]`` (48 kHz): loudness (LUFS, LU, dBTP,
    dB), spectral tilt (dB/octave) and inter-channel correlation. ``reports``: the
    :func:`mastering.loudness.measure_batch` of ``x`` when the caller has it already."""
    with torch.no_grad():
        tilt = features.spectral_tilt_db_per_octave(x)
        corr = features.correlation(x)
        width = side_to_mid_ratio_db(x)
        out = []
        for i, report in enumerate(measure_batch(x) if reports is None else reports):
            d = report.to_dict()
            d.update(
                spectral_tilt_db_oct=round(float(tilt[i]), 3),
                correlation=round(float(corr[i]), 4),
                side_to_mid_db=round(float(width[i]), 2),
            )
            out.append(d)
        return out


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def output_path(source: str | Path, out_dir: str | Path, fmt: str) -> Path:
    """``OUT/<stem>.<ext>`` (``<stem>.mastered.<ext>`` when OUT is the source's folder).

    The stem is sanitized (no separators, no leading dots), so no name escapes ``out_dir``.
    """
    src = Path(source)
    stem = _UNSAFE.sub("_", src.stem).lstrip(".") or "song"
    out = Path(out_dir)
    if out.resolve() == src.parent.resolve():
        stem += ".mastered"
    return out / f"{stem}.{FORMATS[fmt]}"


def master_tensor(
    chain: Chain, audio: Tensor, options: MasterOptions
) -> tuple[Tensor, ChainOutput]:
    """Master one song ``audio [2, samples]`` at 48 kHz; returns the master ``[2, samples]``."""
    x = audio.to(options.device, torch.float32).unsqueeze(0)
    if options.reference is not None or options.sections:
        from mastering.matching import master_guided

        # Guided masters need the chain itself (a retrying wrapper keeps it as ``.chain``).
        out = master_guided(
            getattr(chain, "chain", chain),
            x,
            options.conditioning,
            overrides=options.overrides,
            reference=options.reference,
            match_steps=options.match_steps,
            sections=options.sections,
        )
        return out.audio[0], out
    with torch.no_grad():
        out = chain(x, options.conditioning, overrides=options.overrides)
    return out.audio[0], out


def master_file(
    chain: Chain, source: str | Path, out_dir: str | Path, options: MasterOptions
) -> dict[str, Any]:
    """Read ``source``, master it, write it atomically under ``out_dir``; return the report:
    paths, before/after measurements, parameters (JSON, with units) and timings (s)."""
    t0 = time.perf_counter()
    audio, info = read_audio(source)
    t_read = time.perf_counter()
    master, out = master_tensor(chain, audio, options)
    t_master = time.perf_counter()
    dest = output_path(source, out_dir, options.format)
    write_audio(
        dest,
        master.cpu(),
        sample_rate=48_000,
        out_rate=options.out_rate or info.sample_rate,
        format=options.format,
    )
    t_write = time.perf_counter()
    before, after = summary(audio.unsqueeze(0))[0], summary(master.unsqueeze(0).cpu())[0]
    return {
        "input": str(source),
        "output": str(dest),
        "source": {"sample_rate": info.sample_rate, "channels": info.channels},
        "conditioning": {
            **asdict(options.conditioning),
            "genre": options.conditioning.resolved_genre(),
            "tempo_bpm": round(float(out.cond.tempo_bpm[0]), 2),
            "energy": round(float(out.cond.energy[0]), 3),
            "vocal_ratio": round(float(out.cond.vocal_ratio[0]), 3),
        },
        "before": before,
        "after": after,
        "parameters": out.parameters_json(0, chain.stages),
        **{k: out.info[k][0] for k in ("reference", "sections") if k in out.info},
        "timings_s": {
            "read": round(t_read - t0, 4),
            "master": round(t_master - t_read, 4),
            "write": round(t_write - t_master, 4),
        },
    }
