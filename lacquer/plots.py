"""Before/after pictures for people: long-term spectra and loudness over time (matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def plot_before_after(inputs: Sequence[Path], outputs: Sequence[Path], png: str | Path) -> None:
    """One row per song: long-term mid spectrum (dB per log band vs Hz) and short-term loudness
    (LUFS vs s), before and after. Written atomically to ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mastering.features import band_centers, mid_side_band_spectrum_db
    from mastering.io import read_audio
    from mastering.loudness import short_term_loudness

    rows = len(inputs)
    fig, axes = plt.subplots(rows, 2, figsize=(12, 3.2 * rows), squeeze=False)
    freqs = band_centers().numpy()
    for row, (src, dst) in enumerate(zip(inputs, outputs, strict=True)):
        ax_spec, ax_loud = axes[row]
        for path, label in ((src, "before"), (dst, "after")):
            audio, _ = read_audio(path)
            x = audio.unsqueeze(0)
            with torch.no_grad():
                spec = mid_side_band_spectrum_db(x)[0, 0].numpy()
                st = short_term_loudness(x)[0].numpy()
            ax_spec.semilogx(freqs, spec, label=label)
            ax_loud.plot(3.0 + 0.1 * torch.arange(len(st)).numpy(), st, label=label)
        ax_spec.set(
            title=f"{Path(src).name}: long-term spectrum (mid)",
            xlabel="frequency (Hz)",
            ylabel="level (dB)",
        )
        ax_loud.set(title="short-term loudness (3 s)", xlabel="time (s)", ylabel="loudness (LUFS)")
        for ax in (ax_spec, ax_loud):
            ax.grid(True, alpha=0.3)
            ax.legend()
    fig.tight_layout()
    png = Path(png)
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(png)
