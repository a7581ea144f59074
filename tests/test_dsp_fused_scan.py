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


def test_the_decoupled_detector_is_the_same_fused_or_eager(kernels, monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 200_000, generator=g) * 8 - 30).cuda()
    state = torch.tensor([-30.0, -25.0]).cuda().expand(4, 2)
    attack, release = torch.tensor([1.0, 5.0, 30.0, 100.0]).cuda(), 250.0
    with torch.no_grad():
        fused = envelope_follower(
            x, attack, release, state=state, mode="decoupled", return_state=True
        )
        monkeypatch.setenv("LACQUER_FUSED", "0")
        eager = envelope_follower(
            x, attack, release, state=state, mode="decoupled", return_state=True
        )
    assert _fused_scan.KERNEL not in _fused.broken
    for f, e in zip(fused, eager, strict=True):
        torch.testing.assert_close(f, e, atol=2e-4, rtol=0)
