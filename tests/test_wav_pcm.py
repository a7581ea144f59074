"""24-bit WAV data built with tensors (where the master is) and the header the host adds:
the bytes of mastering.io.write_audio's file, at every length, for mono and stereo."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from mastering.audio.wav_pcm import pcm24_data, wav24_bytes, wav_pcm_header
from mastering.errors import InvalidParameterError
from mastering.io import write_audio


@pytest.mark.parametrize("bits", [16, 24])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("frames", [0, 1, 2, 1001])
def test_header_is_libsndfiles(bits, channels, frames):
    dtype = np.int16 if bits == 16 else np.int32
    buf = io.BytesIO()
    sf.write(buf, np.zeros((frames, channels), dtype), 44_100, subtype=f"PCM_{bits}", format="WAV")
    assert buf.getvalue()[:44] == wav_pcm_header(frames, channels, bits, 44_100)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("frames", [1, 2, 4_801, 48_000])
def test_data_and_header_are_write_audios_file(channels, frames, tmp_path):
    """Rounding, clipping at both ends, odd sizes (the pad byte) and interleaving."""
    gen = torch.Generator().manual_seed(frames + channels)
    x = torch.rand(channels, frames, generator=gen) * 2.4 - 1.2
    x[0, 0] = 1.0 - 2**-24  # rounds up to full scale, then clips
    x[-1, -1] = 2.5 / 2**23  # a tie: rounds half to even
    data = pcm24_data(x)
    assert data.dtype == torch.uint8 and data.numel() == frames * channels * 3
    want = write_audio(tmp_path / "ref.wav", x, format="wav24").read_bytes()
    assert wav24_bytes(data.numpy().tobytes(), channels, 48_000) == want
    assert wav24_bytes(memoryview(data.numpy()), channels, 48_000) == want


def test_float32_scaling_equals_float64_scaling():
    """float32 samples are scaled in float32: the same integers as in float64."""
    x = (torch.rand(2, 99_999, dtype=torch.float64) * 2.2 - 1.1).float()
    x[0, :4] = torch.tensor([0.5, 1.5, -2.5, 3.5]) / 2**23  # ties
    assert torch.equal(pcm24_data(x), pcm24_data(x.double()))


def test_bad_shapes_and_partial_frames_are_refused():
    with pytest.raises(InvalidParameterError, match="channels, samples"):
        pcm24_data(torch.zeros(10))
    with pytest.raises(InvalidParameterError, match="whole frames"):
        wav24_bytes(b"\0" * 7, 2, 48_000)
    with pytest.raises(InvalidParameterError, match="16/24-bit"):
        wav_pcm_header(10, 3, 24, 48_000)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_data_made_on_a_gpu_equals_the_cpus():
    x = torch.rand(2, 480_011) * 2.2 - 1.1
    assert torch.equal(pcm24_data(x.cuda()).cpu(), pcm24_data(x))
