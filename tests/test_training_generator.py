"""Joint fine-tuning with a generator: a small stand-in decoder is trained through the chain;
the mastering losses' gradients reach it and its loss goes down."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mastering.chain import Chain, ChainConfig
from mastering.conditioning import Conditioning
from mastering.training.generator import GeneratorFinetuneConfig, GeneratorFinetuner
from mastering.training.render import master_batch

N = 48_000
COND = [Conditioning(genre="pop", tempo_bpm=120.0, energy=0.6, vocal_ratio=0.3)]


class Decoder(nn.Module):
    """Latent frames ``[batch, 8, 100]`` -> stereo audio ``[batch, 2, 48000]``: a 1x1 conv,
    then a transposed conv that upsamples each frame to 480 samples."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Conv1d(8, 16, 1)
        self.up = nn.ConvTranspose1d(16, 2, 480, stride=480)

    def forward(self, z):
        return 0.3 * torch.tanh(self.up(torch.tanh(self.mix(z))))


@pytest.fixture(scope="module")
def reference():
    from mastering.testsignals import music_like

    chain = Chain(ChainConfig(bypass=("reverb",))).eval()
    with torch.no_grad():
        return master_batch(chain, music_like(1.0, seed=5).unsqueeze(0), COND, [-14.0])


@pytest.mark.parametrize("train_chain", [False, True], ids=["frozen-chain", "trainable-chain"])
def test_decoder_learns_through_the_chain(reference, train_chain):
    torch.manual_seed(0)
    decoder = Decoder()
    chain = Chain(ChainConfig(bypass=("reverb",)))
    before = {k: v.clone() for k, v in chain.state_dict().items()}
    tuner = GeneratorFinetuner(
        decoder, chain, GeneratorFinetuneConfig(lr=3e-3, train_chain=train_chain)
    )
    z = torch.randn(1, 8, 100, generator=torch.Generator().manual_seed(1))
    first_layer = decoder.mix.weight
    losses = []
    for _ in range(6):
        stats = tuner.step(z, reference, COND, [-14.0])
        assert first_layer.grad is not None and torch.isfinite(first_layer.grad).all()
        assert first_layer.grad.abs().sum() > 0
        losses.append(stats["loss"])
    assert min(losses[-2:]) < losses[0]
    changed = any(not torch.equal(before[k], v) for k, v in chain.state_dict().items())
    assert changed == train_chain
