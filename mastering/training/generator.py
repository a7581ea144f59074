"""Joint fine-tuning with an upstream generator: the chain feeds gradients back into it.

A music generator (any ``nn.Module`` whose forward returns raw stereo audio
``[batch, 2, samples]`` at 48 kHz) is followed by the mastering chain; the mastering losses
compare the chain's master with a reference master, and their gradients flow through the
chain's differentiable DSP into the generator's weights. The chain can stay frozen (its
weights fixed, gradients still pass through its audio path) or be fine-tuned along with it.

    gen = MyDecoder()
    tuner = GeneratorFinetuner(gen, Chain.pretrained(), GeneratorFinetuneConfig(train_chain=False))
    for inputs, reference, conditioning, target_lufs in batches:
        stats = tuner.step(inputs, reference, conditioning, target_lufs)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mastering.chain import Chain
from mastering.conditioning import Conditioning
from mastering.losses import LossWeights, MasteringLoss
from mastering.training.render import master_batch


@dataclass
class GeneratorFinetuneConfig:
    """Attributes:
    lr: generator learning rate (Adam).
    train_chain: also fine-tune the chain's controllers (else frozen).
    chain_lr: their learning rate.
    grad_clip: global gradient-norm clip.
    weights: mastering loss weights.
    """

    lr: float = 1e-3
    train_chain: bool = False
    chain_lr: float = 1e-4
    grad_clip: float = 1.0
    weights: LossWeights = field(default_factory=LossWeights)


class MasteredGenerator(nn.Module):
    """``generator`` followed by ``chain``: ``forward(inputs, conditioning, target_lufs)``
    returns the master ``[batch, 2, samples]`` (differentiable w.r.t. both)."""

    def __init__(self, generator: nn.Module, chain: Chain):
        super().__init__()
        self.generator = generator
        self.chain = chain

    def forward(
        self,
        inputs: Tensor,
        conditioning: Sequence[Conditioning],
        target_lufs: Tensor | Sequence[float] | None = None,
    ) -> Tensor:
        raw = self.generator(inputs)
        if raw.dim() != 3 or raw.shape[1] != 2:
            raise ValueError(f"generator must return [batch, 2, samples], got {list(raw.shape)}")
        return master_batch(self.chain, raw, conditioning, target_lufs)


class GeneratorFinetuner:
    """Optimizes a generator (and optionally the chain) through the chain on the mastering
    losses. :meth:`step` returns ``{"loss": total, **components}``."""

    def __init__(
        self, generator: nn.Module, chain: Chain, config: GeneratorFinetuneConfig | None = None
    ):
        self.config = config or GeneratorFinetuneConfig()
        self.model = MasteredGenerator(generator, chain)
        self.loss = MasteringLoss(self.config.weights)
        for p in chain.parameters():
            p.requires_grad_(self.config.train_chain)
        groups = [{"params": list(generator.parameters()), "lr": self.config.lr}]
        if self.config.train_chain:
            groups.append({"params": list(chain.parameters()), "lr": self.config.chain_lr})
        self.optimizer = torch.optim.Adam(groups)

    def step(
        self,
        inputs: Tensor,
        reference: Tensor,
        conditioning: Sequence[Conditioning],
        target_lufs: Tensor | Sequence[float] | None = None,
    ) -> dict[str, float]:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        y = self.model(inputs, conditioning, target_lufs)
        target = None if target_lufs is None else torch.as_tensor(target_lufs).to(y.device)
        loss, parts = self.loss(y.float(), reference, target)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.optimizer.step()
        return {"loss": float(loss.detach()), **parts}
