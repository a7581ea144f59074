"""One-pole smoothers, time-varying scans and envelope followers against plain loops."""

import math

import numpy as np
import pytest
import scipy.signal as ss
import torch

from mastering.dsp import smoothing
from mastering.dsp.smoothing import (
    envelope_follower,
    first_order_recurrence,
    ltv_one_pole,
    one_pole,
    peak_hold_db,
    time_constant_to_coeff,
)

F64 = torch.float64
FS = 48_000
#: Long enough for three levels of the chunked scan (64 * 64 * 2 + 37 samples).
LONG = 8229


def rng_array(seed, *shape):
    return np.random.default_rng(seed).random(shape)


def level_signal(seed, *shape):
    """A rectified, burst-like detector input (so attack and release both happen often)."""
    rng = np.random.default_rng(seed)
    bursts = np.repeat(rng.random((*shape[:-1], shape[-1] // 200 + 1)) ** 3, 200, axis=-1)
    return np.abs(rng.standard_normal(shape)) * bursts[..., : shape[-1]]


# --------------------------------------------------------------------------- references


def loop_recurrence(a, b, y0=0.0):
    y, prev = np.empty_like(b), y0
    for n in range(b.shape[-1]):
        prev = a[n] * prev + b[n]
        y[n] = prev
    return y


def loop_branching(x, a_att, a_rel, y0=0.0):
    y, prev = np.empty_like(x), y0
    for n in range(x.shape[-1]):
        a = a_att if x[n] > prev else a_rel
        prev = a * prev + (1 - a) * x[n]
        y[n] = prev
    return y


def loop_decoupled(x, a_att, a_rel, y1=0.0, y=0.0):
    out = np.empty_like(x)
    for n in range(x.shape[-1]):
        y1 = max(x[n], a_rel * y1 + (1 - a_rel) * x[n])
        y = a_att * y + (1 - a_att) * y1
        out[n] = y
    return out


def loop_peak_hold(x, decay, y0=-np.inf):
    out, prev = np.empty_like(x), y0
    for n in range(x.shape[-1]):
        prev = max(x[n], prev - decay)
        out[n] = prev
    return out


def rows(fn, *arrays):
    """Apply a 1-D reference to every row of ``[rows, T]`` arrays."""
    return np.stack([fn(*row) for row in zip(*arrays, strict=True)])


def in_chunks(fn, x, sizes, *args, **kwargs):
    """Run a stateful kernel over consecutive chunks, feeding the state forward."""
    outputs, state, start = [], kwargs.pop("state", None), 0
    for size in sizes:
        y, state = fn(x[..., start : start + size], *args, state=state, return_state=True, **kwargs)
        outputs.append(y)
        start += size
    return torch.cat(outputs, dim=-1)


# --------------------------------------------------------------------------------- tests


def test_time_constant_to_coeff():
    assert math.isclose(time_constant_to_coeff(10.0, FS), math.exp(-1 / 480))
    assert time_constant_to_coeff(0.0) == 0.0
    t = time_constant_to_coeff(torch.tensor([1.0, 100.0]), 44_100)
    torch.testing.assert_close(t, torch.exp(-1000 / (torch.tensor([1.0, 100.0]) * 44_100)))


def test_one_pole_matches_lfilter_with_state_and_per_row_coefficients():
    x = torch.from_numpy(rng_array(0, 2, 3, 3000))
    a = torch.tensor([[0.9], [0.999]], dtype=F64)  # [2, 1]: per batch item
    y0 = torch.from_numpy(rng_array(1, 2, 3, 1))
    y, state = one_pole(x, a, y0, return_state=True)
    for i in range(2):
        coeff = a[i, 0].item()
        zi = coeff * y0[i].numpy()  # direct form II transposed state
        expected, _ = ss.lfilter([1 - coeff], [1, -coeff], x[i].numpy(), zi=zi)
        np.testing.assert_allclose(y[i].numpy(), expected, atol=1e-12)
    torch.testing.assert_close(state, y[..., -1:])
    by_time = one_pole(x, time_ms=torch.tensor([[2.0], [50.0]], dtype=F64))
    expected_a = time_constant_to_coeff(torch.tensor([[2.0], [50.0]], dtype=F64))
    torch.testing.assert_close(by_time, one_pole(x, expected_a))
    with pytest.raises(ValueError):
        one_pole(x)


def test_one_pole_streaming_equals_one_shot():
    x = torch.randn(2, 2, 5000)
    torch.testing.assert_close(
        in_chunks(one_pole, x, [1, 700, 2299, 2000], 0.995), one_pole(x, 0.995), atol=1e-6, rtol=0
    )


def test_ltv_one_pole_matches_loop_including_extreme_coefficients():
    x = rng_array(2, 3, LONG) - 0.5
    a = rng_array(3, 3, LONG)
    a[:, ::97] = 0.0  # instant steps
    a[:, 5::101] = 1.0  # holds
    y0 = rng_array(4, 3, 1)
    y = ltv_one_pole(torch.from_numpy(x), torch.from_numpy(a), torch.from_numpy(y0))
    expected = rows(lambda ar, xr, s: loop_recurrence(ar, (1 - ar) * xr, s[0]), a, x, y0)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-12)


def test_ltv_one_pole_float32_is_exact_to_rounding():
    x = level_signal(5, 2, LONG)
    a = 0.9 + 0.0999 * rng_array(6, 2, LONG)
    y = ltv_one_pole(torch.from_numpy(x).float(), torch.from_numpy(a).float())
    expected = rows(lambda ar, xr: loop_recurrence(ar, (1 - ar) * xr), a, x)
    np.testing.assert_allclose(y.numpy(), expected, atol=2e-6 * np.abs(expected).max())


def test_first_order_recurrence_general_coefficients_and_streaming():
    a = torch.from_numpy(2 * rng_array(7, 2, 3000) - 1)  # negative coefficients too
    b = torch.from_numpy(rng_array(8, 2, 3000))
    expected = rows(loop_recurrence, a.numpy(), b.numpy())
    np.testing.assert_allclose(first_order_recurrence(a, b).numpy(), expected, atol=1e-12)
    chunked, state, start = [], None, 0
    for size in (64, 1, 1000, 1935):
        y, state = first_order_recurrence(
            a[..., start : start + size], b[..., start : start + size], state, return_state=True
        )
        chunked.append(y)
        start += size
    np.testing.assert_allclose(torch.cat(chunked, -1).numpy(), expected, atol=1e-12)


def test_ltv_one_pole_streaming_equals_one_shot():
    x, a = torch.randn(2, 3000), torch.rand(2, 3000)
    chunked, state, start = [], None, 0
    for size in (100, 2048, 852):
        y, state = ltv_one_pole(
            x[..., start : start + size], a[..., start : start + size], state, return_state=True
        )
        chunked.append(y)
        start += size
    torch.testing.assert_close(torch.cat(chunked, -1), ltv_one_pole(x, a), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("attack_ms", "release_ms"), [(1.0, 100.0), (0.1, 500.0), (10.0, 10.0)])
def test_branching_follower_matches_loop(attack_ms, release_ms):
    x = level_signal(9, 2, LONG)
    a_att = time_constant_to_coeff(attack_ms)
    a_rel = time_constant_to_coeff(release_ms)
    y = envelope_follower(torch.from_numpy(x), attack_ms, release_ms)
    expected = rows(lambda r: loop_branching(r, a_att, a_rel), x)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-10)
    y32 = envelope_follower(torch.from_numpy(x).float(), attack_ms, release_ms)
    # float32 rounding (a float32 loop differs from float64 by as much)
    np.testing.assert_allclose(y32.numpy(), expected, atol=5e-5 * np.abs(expected).max())


def test_branching_follower_per_row_times_state_and_segments(monkeypatch):
    monkeypatch.setattr(smoothing, "_segment_length", lambda x: 1000)
    x = level_signal(10, 2, 3, 2500)
    attack = torch.tensor([[2.0], [0.5]], dtype=F64)  # per batch item
    y0 = rng_array(11, 2, 3, 1)
    y, state = envelope_follower(
        torch.from_numpy(x), attack, 80.0, state=torch.from_numpy(y0), return_state=True
    )
    for i in range(2):
        a_att = time_constant_to_coeff(attack[i, 0].item())
        expected = rows(
            lambda r, s, a=a_att: loop_branching(r, a, time_constant_to_coeff(80.0), s[0]),
            x[i],
            y0[i],
        )
        np.testing.assert_allclose(y[i].numpy(), expected, atol=1e-10)
    torch.testing.assert_close(state, y[..., -1:])


@pytest.mark.parametrize("mode", ["branching", "decoupled"])
def test_follower_streaming_equals_one_shot(mode):
    x = torch.from_numpy(level_signal(12, 2, 2, 4000)).float()
    one_shot = envelope_follower(x, 3.0, 60.0, mode=mode)
    streamed = in_chunks(envelope_follower, x, [1, 999, 1700, 1300], 3.0, 60.0, mode=mode)
    torch.testing.assert_close(streamed, one_shot, atol=1e-5, rtol=0)


def test_branching_warns_when_not_settled():
    x = torch.from_numpy(level_signal(13, 1, 2000))
    with pytest.warns(RuntimeWarning, match="approximate"):
        envelope_follower(x, 1.0, 100.0, max_iterations=1)


def test_decoupled_follower_matches_loop():
    x = level_signal(14, 3, LONG)
    state = rng_array(15, 3, 2)
    y, final = envelope_follower(
        torch.from_numpy(x),
        2.0,
        40.0,
        state=torch.from_numpy(state),
        mode="decoupled",
        return_state=True,
    )
    a_att, a_rel = time_constant_to_coeff(2.0), time_constant_to_coeff(40.0)
    expected = rows(lambda r, s: loop_decoupled(r, a_att, a_rel, s[0], s[1]), x, state)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-10)
    assert final.shape == (3, 2)
    torch.testing.assert_close(final[..., 1:], y[..., -1:])


def test_peak_hold_db_matches_loop_and_streams():
    x_db = 20 * rng_array(16, 2, LONG) - 60
    release = torch.tensor([5.0, 300.0], dtype=F64)  # one per row
    y = peak_hold_db(torch.from_numpy(x_db), release)
    decays = 20 / math.log(10) * 1000 / (release.numpy() * FS)
    expected = np.stack([loop_peak_hold(x_db[i], decays[i]) for i in range(2)])
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-9)
    x32 = torch.from_numpy(x_db).float()
    streamed = in_chunks(peak_hold_db, x32, [5, 3000, 5224], release.float())
    np.testing.assert_allclose(streamed.numpy(), expected, atol=2e-4)


def t64(seed, *shape):
    return torch.from_numpy(rng_array(seed, *shape)).requires_grad_()


# fast_mode: gradcheck compares random projections of the Jacobian (the full numerical
# Jacobian of a few hundred samples through the scans takes minutes).


def test_gradcheck_ltv_one_pole():
    x, y0 = t64(20, 2, 300), t64(22, 2, 1)
    a = (0.2 + 0.75 * t64(21, 2, 300)).detach().requires_grad_()
    assert torch.autograd.gradcheck(ltv_one_pole, (x, a, y0), fast_mode=True)


def test_gradcheck_one_pole():
    x, y0 = t64(23, 2, 300), t64(24, 2, 1)
    coeff = torch.tensor([0.9, 0.5], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda u, c, s: one_pole(u, c, s), (x, coeff, y0), fast_mode=True
    )


@pytest.mark.parametrize("mode", ["branching", "decoupled"])
def test_gradcheck_envelope_follower(mode):
    level = torch.from_numpy(level_signal(25, 2, 300)).requires_grad_()
    attack = torch.tensor(0.3, dtype=F64, requires_grad=True)
    release = torch.tensor(2.0, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda u, att, rel: envelope_follower(u, att, rel, mode=mode),
        (level, attack, release),
        fast_mode=True,
    )


def test_gradcheck_peak_hold_db():
    level = torch.from_numpy(20 * level_signal(26, 2, 300)).requires_grad_()
    release = torch.tensor(1.0, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(peak_hold_db, (level, release), fast_mode=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.from_numpy(level_signal(27, 2, 2, LONG)).float()
    a = torch.rand(2, 2, LONG)
    for fn, rtol in (
        (lambda u, p: ltv_one_pole(u, p), 1e-5),
        (lambda u, p: one_pole(u, 0.99), 1e-5),
        (lambda u, p: envelope_follower(u, 1.0, 50.0), 1e-5),
        # On CUDA the fused Triton scan runs: float32 in another rounding order (see
        # test_dsp_fused_scan for its accuracy against float64).
        (lambda u, p: envelope_follower(u, 1.0, 50.0, mode="decoupled"), 1e-4),
        (lambda u, p: peak_hold_db(20 * u, 30.0), 1e-5),
    ):
        torch.testing.assert_close(fn(x.cuda(), a.cuda()).cpu(), fn(x, a), atol=1e-5, rtol=rtol)


@pytest.mark.parametrize("chunk", [2, 8, 64])
def test_scan_chunk_sizes_match_loops(chunk):
    """Every chunk size (the device default is short, the CPU one long) gives the loop's
    result, for linear and max-affine maps, with a start state."""
    from mastering.dsp._scan import LINEAR, MAX_AFFINE, scan

    a = torch.from_numpy(rng_array(30, 2, LONG))
    b = torch.from_numpy(rng_array(31, 2, LONG) - 0.5)
    p = torch.from_numpy(rng_array(32, 2, LONG) - 0.5)
    y0 = torch.from_numpy(rng_array(33, 2))
    linear = scan((a, b), y0, LINEAR, chunk=chunk)
    expected = rows(lambda ar, br, s: loop_recurrence(ar, br, s), a.numpy(), b.numpy(), y0.numpy())
    np.testing.assert_allclose(linear.numpy(), expected, atol=1e-12)
    peak = scan((p, a, b), y0, MAX_AFFINE, chunk=chunk)
    pn, an, bn = p.numpy(), a.numpy(), b.numpy()
    want = np.empty((2, LONG))
    for r in range(2):
        y = float(y0[r])
        for n in range(LONG):
            y = max(pn[r, n], an[r, n] * y + bn[r, n])
            want[r, n] = y
    np.testing.assert_allclose(peak.numpy(), want, atol=1e-12)
