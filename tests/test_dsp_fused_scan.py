"""The fused (Triton) pole scans against the eager chunked scan, on CUDA."""

import pytest
import torch

from mastering.dsp import _fused, _fused_scan
from mastering.dsp._scan import LINEAR, MAX_AFFINE, scan
from mastering.dsp.smoothing import envelope_follower
from mastering.dsp.warmup import warm_up

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def kernels():
    if not warm_up("cuda")[_fused_scan.KERNEL]:
        pytest.skip("Triton not importable")


@pytest.mark.parametrize("length", [1, 5, 1024, 1500, 4097, 3 * _fused_scan.SEGMENT + 77])
@pytest.mark.parametrize("family", _fused_scan.FAMILIES)
def test_pole_scan_matches_the_eager_scan(kernels, length, family):
    g = torch.Generator().manual_seed(length)
    x = (torch.randn(3, 2, length, generator=g) * 10 - 40).cuda()
    pole = torch.tensor([0.9, 0.9995, 0.0]).cuda().view(3, 1)
    y0 = torch.tensor([-20.0, 0.0, 5.0]).cuda().view(3, 1).expand(3, 2)
    a = pole.unsqueeze(-1).expand_as(x)
    if family == "one_pole":
        ref = scan((a, (1 - a) * x), y0, LINEAR)
    else:
        ref = scan((x, a, (1 - a) * x), y0, MAX_AFFINE)
    got = _fused_scan.pole_scan(x, pole.expand(3, 2), y0, family)
    # The same float32 pole in both; they differ by the order of float32 roundings only
    # (measured on an H100: up to 1.8e-4 on values near -40, i.e. 4e-6 relative). Against
    # float64 both are off by up to ~7e-4 here: a pole of 0.9995 rounded to float32 is off by
    # 2e-8, which 1,000 samples of decay turn into 2e-5 of the difference.
    torch.testing.assert_close(got, ref, atol=3e-4, rtol=0)


def test_the_decoupled_detector_fused_is_as_accurate_as_eager(kernels, monkeypatch):
    """Against float64, the fused float32 detector is within 2x the eager float32 error (an
    H100 measured 3.1-4.6e-4 dB fused, 2.9-4.0e-4 dB eager, per row, on -30 dB levels)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 200_000, generator=g) * 8 - 30).cuda()
    state = torch.tensor([-30.0, -25.0]).cuda().expand(4, 2)
    attack, release = torch.tensor([1.0, 5.0, 30.0, 100.0]).cuda(), 250.0

    def run(x, attack, state):
        return envelope_follower(
            x, attack, release, state=state, mode="decoupled", return_state=True
        )

    with torch.no_grad():
        fused = run(x, attack, state)
        monkeypatch.setenv("LACQUER_FUSED", "0")
        eager = run(x, attack, state)
        exact = run(x.double(), attack.double(), state.double())
    assert _fused_scan.KERNEL not in _fused.broken
    for f, e, d in zip(fused, eager, exact, strict=True):
        err_fused = (f.double() - d).abs().amax(-1)
        err_eager = (e.double() - d).abs().amax(-1)
        assert (err_fused <= 2 * err_eager + 1e-5).all(), (err_fused, err_eager)
        assert err_fused.max() < 1e-3
