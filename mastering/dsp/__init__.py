"""Differentiable DSP kernels: plain functions over tensors shaped [batch, channels, samples]."""
