"""Chunk-safe finite-memory operators (mastering.dsp.chunking) against scipy/numpy references."""

from __future__ import annotations

import numpy as np
import scipy.signal
import torch

from mastering.dsp.chunking import apply_with_history, delay
from mastering.dsp.fir import fft_convolve

CHUNKS = (1, 7, 100, 33, 2000, 5000)


def _chunked(x: torch.Tensor, fn) -> torch.Tensor:
    state, parts, start = None, [], 0
    for size in CHUNKS:
        y, state = fn(x[..., start : start + size], state)
        parts.append(y)
        start += size
    assert start >= x.shape[-1]
    return torch.cat(parts, -1)


def test_causal_fir_in_chunks_matches_lfilter():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7000))
    taps = rng.standard_normal(129)
    ref = scipy.signal.lfilter(taps, [1.0], x, axis=-1)
    t = torch.from_numpy(taps)

    def op(buf: torch.Tensor) -> torch.Tensor:
        return fft_convolve(buf, t)[..., : buf.shape[-1]]

    y = _chunked(torch.from_numpy(x), lambda c, s: apply_with_history(c, s, op, past=128))
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-9)


def test_noncausal_op_is_delayed_by_lookahead():
    """A centred moving average (``np.convolve(..., 'same')``) needs 5 samples each side."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(7000)
    k = np.hanning(11)
    # The whole signal with silence before it, op applied, delayed by the 5-sample lookahead.
    ref = np.convolve(np.r_[np.zeros(5), x], k, mode="same")[: x.size]
    kt = torch.from_numpy(k)

    def op(buf: torch.Tensor) -> torch.Tensor:
        return fft_convolve(buf, kt, mode="same")

    fn = lambda c, s: apply_with_history(c, s, op, past=5, lookahead=5)  # noqa: E731
    y = _chunked(torch.from_numpy(x), fn).numpy()
    np.testing.assert_allclose(y, ref, atol=1e-9)
    np.testing.assert_allclose(y[5:], np.convolve(x, k, mode="same")[:-5], atol=1e-9)


def test_delay_line():
    x = torch.arange(1.0, 7001.0).view(1, -1)
    y = _chunked(x, lambda c, s: delay(c, s, 37))
    assert torch.equal(y[:, 37:], x[:, :-37])
    assert torch.equal(y[:, :37], torch.zeros(1, 37))


def test_apply_chunked_equals_one_call():
    """Sub-chunking for bounded memory changes neither the output nor the history."""
    from mastering.dsp.chunking import apply_chunked, apply_with_history

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5000, generator=g, dtype=torch.float64)
    kernel = torch.randn(1, 1, 33, generator=g, dtype=torch.float64)

    def op(b):
        flat = b.reshape(-1, 1, b.shape[-1])
        y = torch.nn.functional.conv1d(torch.nn.functional.pad(flat, (16, 16)), kernel)
        return torch.tanh(y).reshape(b.shape)

    ref, ref_hist = apply_with_history(x, None, op, past=16, lookahead=16)
    y, hist = apply_chunked(x, None, op, past=16, lookahead=16, max_elements=6 * 700)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(hist, ref_hist)
