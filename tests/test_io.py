"""Audio I/O: round trips, resampling, channel folding, dither, atomic writes, bad input."""

from __future__ import annotations

import math
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mastering.audio import write as write_module
from mastering.audio.downmix import G
from mastering.audio.write import quantize, quantize_tensor
from mastering.errors import (
    AudioReadError,
    AudioWriteError,
    InvalidAudioError,
    InvalidParameterError,
    UnsupportedAudioError,
)
from mastering.io import (
    WRITE_FORMATS,
    downmix_matrix,
    iter_audio_blocks,
    probe_audio,
    read_audio,
    write_audio,
)

RATE = 48_000
HAS_MP3 = "MP3" in sf.available_formats()
needs_mp3 = pytest.mark.skipif(not HAS_MP3, reason="libsndfile built without MPEG support")


def stereo_signal(rate: int, frames: int, freq: float = 1000.0) -> np.ndarray:
    """``[frames, 2]`` float32: a ``freq`` sine at -6 dBFS left, a 1.5x ``freq`` at -12 right."""
    t = np.arange(frames) / rate
    left = 0.5 * np.sin(2 * np.pi * freq * t)
    right = 0.25 * np.sin(2 * np.pi * 1.5 * freq * t + 0.3)
    return np.stack([left, right], axis=1).astype(np.float32)


def write_source(
    path: Path, data: np.ndarray, rate: int = RATE, subtype: str = "PCM_24", container=None
) -> Path:
    sf.write(str(path), data, rate, subtype=subtype, format=container)
    return path


def peak_frequency(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def assert_names_file(exc_info: pytest.ExceptionInfo, path: Path) -> None:
    assert path.name in str(exc_info.value)


# --------------------------------------------------------------------------- reading formats

LOSSLESS_SOURCES = [
    ("wav", "WAV", "PCM_16", 16),
    ("wav", "WAV", "PCM_24", 24),
    ("wav", "WAV", "PCM_32", 32),
    ("wav", "WAV", "FLOAT", None),
    ("wav", "WAV", "DOUBLE", None),
    ("flac", "FLAC", "PCM_16", 16),
    ("flac", "FLAC", "PCM_24", 24),
    ("aiff", "AIFF", "PCM_16", 16),
    ("aiff", "AIFF", "PCM_24", 24),
    ("aiff", "AIFF", "FLOAT", None),
]


@pytest.mark.parametrize(("ext", "container", "subtype", "bits"), LOSSLESS_SOURCES)
def test_read_lossless_formats_preserve_samples(tmp_path, ext, container, subtype, bits):
    source = stereo_signal(RATE, 4800)
    path = write_source(tmp_path / f"in.{ext}", source, subtype=subtype)

    audio, info = read_audio(path)

    assert audio.dtype == torch.float32 and audio.shape == (2, 4800) and audio.is_contiguous()
    assert (info.sample_rate, info.channels, info.frames) == (RATE, 2, 4800)
    assert (info.format, info.subtype, info.path) == (container, subtype, str(path))
    assert info.duration_s == pytest.approx(0.1)
    lsb = 0.0 if bits is None else 2.0 ** (1 - bits)
    np.testing.assert_allclose(audio.numpy().T, source, rtol=0, atol=1.5 * lsb + 1e-7)
    decoded = sf.read(str(path), dtype="float32", always_2d=True)[0]
    np.testing.assert_array_equal(audio.numpy().T, decoded)


@pytest.mark.parametrize(
    ("ext", "subtype"),
    [("ogg", "VORBIS"), pytest.param("mp3", "MPEG_LAYER_III", marks=needs_mp3)],
)
def test_read_lossy_formats(tmp_path, ext, subtype):
    source = stereo_signal(RATE, RATE // 2)
    path = write_source(tmp_path / f"in.{ext}", source, subtype=subtype)

    audio, info = read_audio(path)

    assert audio.shape == (2, RATE // 2) and info.subtype == subtype
    error = audio.numpy().T - source
    assert np.sqrt(np.mean(error**2)) < 0.1 * np.sqrt(np.mean(source**2))  # SNR > 20 dB


def test_float_wav_peaks_above_full_scale_are_not_clipped(tmp_path):
    source = 3.0 * stereo_signal(RATE, 4800)  # peaks at +3.5 dBFS (left) ... 1.5
    path = write_source(tmp_path / "hot.wav", source, subtype="FLOAT")

    audio, _ = read_audio(path)
    np.testing.assert_array_equal(audio.numpy().T, source)

    resampled, _ = read_audio(write_source(tmp_path / "hot441.wav", source, 44_100, "FLOAT"))
    assert resampled.abs().max() > 1.45


def test_mono_is_read_as_dual_mono(tmp_path):
    mono = stereo_signal(RATE, 4800)[:, 0]
    audio, info = read_audio(write_source(tmp_path / "mono.flac", mono, subtype="PCM_24"))

    assert info.channels == 1 and audio.shape == (2, 4800)
    np.testing.assert_array_equal(audio[0].numpy(), audio[1].numpy())
    np.testing.assert_allclose(audio[0].numpy(), mono, atol=2.0**-23)


# --------------------------------------------------------------------------- resampling


def test_44k1_sine_becomes_1khz_at_48k(tmp_path):
    source = stereo_signal(44_100, 44_100)
    audio, info = read_audio(write_source(tmp_path / "cd.wav", source, 44_100, "FLOAT"))

    assert info.sample_rate == 44_100
    assert abs(audio.shape[1] - round(44_100 * 48_000 / 44_100)) <= 1
    assert peak_frequency(audio[0].numpy(), RATE) == pytest.approx(1000.0, abs=1.0)
    t = np.arange(audio.shape[1]) / RATE
    ideal = 0.5 * np.sin(2 * np.pi * 1000.0 * t)
    middle = slice(2000, -2000)  # away from the edges' filter transients
    np.testing.assert_allclose(audio[0].numpy()[middle], ideal[middle], atol=1e-4)


def test_resampled_length_for_an_odd_frame_count(tmp_path):
    audio, _ = read_audio(write_source(tmp_path / "odd.wav", stereo_signal(44_100, 12_345), 44_100))
    assert abs(audio.shape[1] - round(12_345 * 48_000 / 44_100)) <= 1


@pytest.mark.parametrize("rate", [8_000, 192_000])
def test_rate_range_edges_are_read(tmp_path, rate):
    frames = rate // 4
    path = write_source(tmp_path / f"r{rate}.wav", stereo_signal(rate, frames, 500.0), rate)

    audio, info = read_audio(path)

    assert info.sample_rate == rate
    assert abs(audio.shape[1] - round(frames * RATE / rate)) <= 1
    assert peak_frequency(audio[0].numpy(), RATE) == pytest.approx(500.0, abs=4.0)


@pytest.mark.parametrize("rate", [7_999, 192_001])
def test_rates_outside_the_range_are_unsupported(tmp_path, rate):
    path = write_source(tmp_path / f"r{rate}.wav", stereo_signal(rate, 800), rate)
    with pytest.raises(UnsupportedAudioError, match=f"{rate} Hz") as exc:
        read_audio(path)
    assert_names_file(exc, path)


def test_write_resamples_to_out_rate(tmp_path):
    audio = torch.from_numpy(stereo_signal(RATE, RATE).T.copy())
    path = write_audio(tmp_path / "out.wav", audio, out_rate=44_100, format="wav32f")

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    assert rate == 44_100 and abs(len(data) - 44_100) <= 1
    assert peak_frequency(data[:, 0], rate) == pytest.approx(1000.0, abs=1.0)

    back, _ = read_audio(path)  # 48 k -> 44.1 k -> 48 k stays within -80 dB in the middle
    np.testing.assert_allclose(back.numpy()[:, 2000:-2000], audio.numpy()[:, 2000:-2000], atol=1e-4)


# --------------------------------------------------------------------------- channels


def test_more_than_two_channels_is_unsupported_without_downmix(tmp_path):
    path = write_source(tmp_path / "surround.wav", np.zeros((480, 6), np.float32))
    with pytest.raises(UnsupportedAudioError, match="6 channels") as exc:
        read_audio(path)
    assert_names_file(exc, path)


def constant_channels(values: list[float], frames: int = 480) -> np.ndarray:
    return np.tile(np.asarray(values, np.float32), (frames, 1))


def test_downmix_5_1_uses_bs775_coefficients(tmp_path):
    L, R, C, LFE, Ls, Rs = 0.1, 0.2, 0.3, 0.4, 0.05, 0.06
    path = write_source(
        tmp_path / "51.wav", constant_channels([L, R, C, LFE, Ls, Rs]), subtype="FLOAT"
    )

    audio, info = read_audio(path, downmix=True)

    assert info.channels == 6 and audio.shape == (2, 480)
    np.testing.assert_allclose(audio[0].numpy(), L + G * C + G * Ls, rtol=1e-6)
    np.testing.assert_allclose(audio[1].numpy(), R + G * C + G * Rs, rtol=1e-6)


def test_downmix_of_an_unknown_layout_is_an_equal_power_odd_even_fold(tmp_path):
    values = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07]
    path = write_source(tmp_path / "7ch.wav", constant_channels(values), subtype="FLOAT")

    audio, _ = read_audio(path, downmix=True)

    left = sum(values[0::2]) / math.sqrt(4)  # channels 1, 3, 5, 7
    right = sum(values[1::2]) / math.sqrt(3)  # channels 2, 4, 6
    np.testing.assert_allclose(audio[:, 0].numpy(), [left, right], rtol=1e-6)


def test_downmix_matrices_are_defined_for_any_count():
    for channels in range(1, 13):
        matrix = downmix_matrix(channels)
        assert matrix.shape == (2, channels) and np.all(matrix >= 0)
    np.testing.assert_array_equal(downmix_matrix(2), np.eye(2))


# --------------------------------------------------------------------------- streaming


def test_iter_audio_blocks_matches_read_audio(tmp_path):
    path = write_source(tmp_path / "cd.flac", stereo_signal(44_100, 22_050), 44_100, "PCM_16")
    whole, _ = read_audio(path)

    blocks = list(iter_audio_blocks(path, 4096))

    assert all(b.shape == (2, 4096) and b.dtype == torch.float32 for b in blocks[:-1])
    assert 1 <= blocks[-1].shape[1] <= 4096
    torch.testing.assert_close(torch.cat(blocks, dim=1), whole, rtol=0, atol=0)


def test_iter_audio_blocks_checks_the_header_when_called(tmp_path):
    with pytest.raises(AudioReadError, match="not found"):
        iter_audio_blocks(tmp_path / "missing.wav", 1024)  # no iteration needed


def test_iter_audio_blocks_raises_on_nan_when_reached(tmp_path):
    data = np.zeros((10_000, 2), np.float32)
    data[9_000, 1] = np.nan
    blocks = iter_audio_blocks(write_source(tmp_path / "nan.wav", data, subtype="FLOAT"), 1000)
    with pytest.raises(InvalidAudioError, match="frame 9000"):
        list(blocks)


# --------------------------------------------------------------------------- writing formats

WRITE_EXPECTATIONS = {
    "wav16": ("WAV", "PCM_16", 1.5 * 2.0**-15),  # ±1 LSB TPDF + 1/2 LSB rounding
    "wav24": ("WAV", "PCM_24", 0.5 * 2.0**-23),
    "wav32f": ("WAV", "FLOAT", 0.0),
    "flac16": ("FLAC", "PCM_16", 1.5 * 2.0**-15),
    "flac24": ("FLAC", "PCM_24", 0.5 * 2.0**-23),
}


def test_every_write_format_is_tested():
    assert set(WRITE_EXPECTATIONS) == set(WRITE_FORMATS)


@pytest.mark.parametrize("name", sorted(WRITE_EXPECTATIONS))
def test_write_formats_round_trip(tmp_path, name):
    container, subtype, tolerance = WRITE_EXPECTATIONS[name]
    audio = torch.from_numpy(stereo_signal(RATE, 4800).T.copy())

    path = write_audio(tmp_path / f"out.{name}", audio, format=name)

    info = probe_audio(path)
    assert (info.format, info.subtype, info.sample_rate, info.frames) == (
        container,
        subtype,
        RATE,
        4800,
    )
    back, _ = read_audio(path)
    np.testing.assert_allclose(back.numpy(), audio.numpy(), rtol=0, atol=tolerance + 1e-9)
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_24_bit_samples_survive_read_and_rewrite_bit_exactly(tmp_path):
    codes = np.random.default_rng(1).integers(-(2**23), 2**23, size=(4800, 2), dtype=np.int32)
    source = write_source(tmp_path / "in.wav", codes << 8, subtype="PCM_24")

    audio, _ = read_audio(source)
    out = write_audio(tmp_path / "copy.flac", audio, format="flac24")

    rewritten = sf.read(str(out), dtype="int32", always_2d=True)[0] >> 8
    np.testing.assert_array_equal(rewritten, codes)


def test_wav32f_keeps_peaks_above_full_scale(tmp_path):
    audio = np.array([[2.5, -3.0, 0.25], [1.0001, 0.0, -1.5]], np.float32)
    path = write_audio(tmp_path / "hot.wav", audio, format="wav32f")
    np.testing.assert_array_equal(sf.read(str(path), dtype="float32")[0].T, audio)


def test_integer_formats_clip_at_full_scale(tmp_path):
    audio = np.array([1.5, 1.0, -1.0, -1.5, 0.5], np.float32)  # mono, [samples]
    path = write_audio(tmp_path / "clip.wav", audio, format="wav24")
    codes = sf.read(str(path), dtype="int32")[0] >> 8
    np.testing.assert_array_equal(codes, [2**23 - 1, 2**23 - 1, -(2**23), -(2**23), 2**22])


def test_mono_tensor_writes_a_mono_file(tmp_path):
    path = write_audio(tmp_path / "m.flac", torch.zeros(1, 480), format="flac24")
    assert probe_audio(path).channels == 1


# --------------------------------------------------------------------------- dither


def test_tpdf_dither_keeps_a_minus_100_dbfs_sine_in_16_bit(tmp_path):
    amplitude = 10 ** (-100 / 20)  # 0.33 LSB at 16 bit: plain rounding gives silence
    t = np.arange(RATE) / RATE
    sine = (amplitude * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    assert not quantize(sine[:, None], 16, None).any()

    path = write_audio(tmp_path / "quiet.wav", sine, format="wav16")
    codes = sf.read(str(path), dtype="int16")[0].astype(np.float64)

    lsb = 2.0**-15
    assert np.count_nonzero(codes) > RATE // 10
    error = codes * lsb - sine
    noise_dbfs = 20 * np.log10(np.sqrt(np.mean(error**2)))
    assert noise_dbfs == pytest.approx(20 * np.log10(lsb / 2), abs=0.5)  # TPDF: Δ/2 rms, -96.3 dBFS
    assert np.max(np.abs(error)) <= 1.5 * lsb
    recovered = 2 * np.mean(codes * lsb * np.sin(2 * np.pi * 1000.0 * t))
    assert recovered == pytest.approx(amplitude, rel=0.05)  # dither keeps the sine, unbiased


def test_tpdf_dither_is_triangular_over_plus_minus_one_lsb():
    codes = quantize(np.zeros((100_000, 2), np.float32), 16, np.random.default_rng(3))
    values, counts = np.unique(codes, return_counts=True)
    assert list(values) == [-1, 0, 1]
    np.testing.assert_allclose(counts / codes.size, [0.125, 0.75, 0.125], atol=0.005)


def test_dither_is_deterministic_per_call(tmp_path):
    audio = 1e-4 * torch.from_numpy(stereo_signal(RATE, 4800).T.copy())

    def written(name: str, generator=None) -> bytes:
        return write_audio(tmp_path / name, audio, format="wav16", generator=generator).read_bytes()

    assert written("a.wav") == written("b.wav")
    seeded = written("c.wav", np.random.default_rng(7))
    assert seeded == written("d.wav", np.random.default_rng(7))
    assert seeded != written("e.wav", np.random.default_rng(8))


# --------------------------------------------------------------------------- atomic writes


@pytest.fixture
def small_write_blocks(monkeypatch):
    monkeypatch.setattr(write_module, "WRITE_BLOCK_FRAMES", 1000)


def fail_on_second_block(monkeypatch, error: BaseException, seen: list[int]) -> None:
    """Makes the encoder raise ``error`` after one block has reached the temp file."""
    encode = write_module._encode_block

    def encode_then_fail(block, spec, rng):
        if seen:
            raise error
        seen.append(len(block))
        return encode(block, spec, rng)

    monkeypatch.setattr(write_module, "_encode_block", encode_then_fail)


def test_failed_write_leaves_no_partial_file_and_no_temp(tmp_path, monkeypatch, small_write_blocks):
    seen: list[int] = []
    fail_on_second_block(monkeypatch, OSError("disk full"), seen)
    target = tmp_path / "master.wav"

    with pytest.raises(AudioWriteError, match="disk full") as exc:
        write_audio(target, torch.zeros(2, 5000))

    assert seen == [1000]  # one block was written before the failure
    assert_names_file(exc, target)
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch, small_write_blocks):
    target = write_audio(tmp_path / "master.flac", torch.full((2, 480), 0.25), format="flac24")
    before = target.read_bytes()
    fail_on_second_block(monkeypatch, RuntimeError("encoder crashed"), [])

    with pytest.raises(AudioWriteError):
        write_audio(target, torch.zeros(2, 5000), format="flac24")

    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["master.flac"]


def test_interrupted_write_cleans_up_and_propagates(tmp_path, monkeypatch, small_write_blocks):
    fail_on_second_block(monkeypatch, KeyboardInterrupt(), [])
    with pytest.raises(KeyboardInterrupt):
        write_audio(tmp_path / "x.wav", torch.zeros(2, 5000))
    assert os.listdir(tmp_path) == []


def test_written_file_gets_normal_permissions(tmp_path):
    path = write_audio(tmp_path / "out.wav", torch.zeros(2, 480))
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# --------------------------------------------------------------------------- write errors


def test_write_to_a_missing_folder(tmp_path):
    target = tmp_path / "nope" / "out.wav"
    with pytest.raises(AudioWriteError, match="does not exist") as exc:
        write_audio(target, torch.zeros(2, 480))
    assert_names_file(exc, target)


def test_write_to_an_unwritable_folder(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    target = tmp_path / "out.wav"
    with pytest.raises(AudioWriteError, match="not writable") as exc:
        write_audio(target, torch.zeros(2, 480))
    assert_names_file(exc, target)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_write_to_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    with pytest.raises(AudioWriteError, match="not writable"):
        write_audio(folder / "out.wav", torch.zeros(2, 480))


def test_write_onto_a_folder(tmp_path):
    (tmp_path / "out.wav").mkdir()
    with pytest.raises(AudioWriteError, match="folder") as exc:
        write_audio(tmp_path / "out.wav", torch.zeros(2, 480))
    assert_names_file(exc, tmp_path / "out.wav")


def test_write_with_an_unknown_format_lists_the_valid_ones(tmp_path):
    target = tmp_path / "out.mp3"
    with pytest.raises(AudioWriteError, match="'mp3'") as exc:
        write_audio(target, torch.zeros(2, 480), format="mp3")
    assert all(name in str(exc.value) for name in WRITE_FORMATS)
    assert_names_file(exc, target)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_write_refuses_nan_and_inf(tmp_path, bad):
    audio = torch.zeros(2, 480)
    audio[1, 100] = bad
    target = tmp_path / "out.wav"
    with pytest.raises(InvalidAudioError, match="NaN or Inf") as exc:
        write_audio(target, audio)
    assert_names_file(exc, target)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("shape", [(3, 480), (1, 2, 480), (2, 0)])
def test_write_refuses_bad_shapes(tmp_path, shape):
    with pytest.raises((InvalidParameterError, InvalidAudioError)):
        write_audio(tmp_path / "out.wav", torch.zeros(shape))
    assert os.listdir(tmp_path) == []


def test_write_refuses_a_rate_out_of_range(tmp_path):
    with pytest.raises(InvalidParameterError, match="out_rate"):
        write_audio(tmp_path / "out.wav", torch.zeros(2, 480), out_rate=4000)


# --------------------------------------------------------------------------- bad input


def make_missing(tmp: Path) -> Path:
    return tmp / "missing.wav"


def make_empty(tmp: Path) -> Path:
    (tmp / "empty.wav").touch()
    return tmp / "empty.wav"


def make_text(name: str) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        (tmp / name).write_text("this is not audio\n" * 50)
        return tmp / name

    return build


def make_garbage_riff(tmp: Path) -> Path:
    data = b"RIFF" + struct.pack("<I", 1000) + bytes(np.random.default_rng(0).bytes(1000))
    (tmp / "garbage.wav").write_bytes(data)
    return tmp / "garbage.wav"


def make_corrupt_fmt(tmp: Path) -> Path:
    data = bytearray(write_source(tmp / "ok.wav", stereo_signal(RATE, 480)).read_bytes())
    data[20:36] = b"\xff" * 16  # the fmt chunk body
    (tmp / "badfmt.wav").write_bytes(data)
    return tmp / "badfmt.wav"


def make_truncated(ext: str, subtype: str, keep: float = 0.5) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        full = write_source(tmp / f"full.{ext}", stereo_signal(RATE, RATE // 2), subtype=subtype)
        data = full.read_bytes()
        cut = tmp / f"cut.{ext}"
        cut.write_bytes(data[: int(len(data) * keep)])
        return cut

    return build


def make_zero_frames(tmp: Path) -> Path:
    return write_source(tmp / "noframes.wav", np.zeros((0, 2), np.float32))


def make_non_finite(value: float) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        data = stereo_signal(RATE, 4800)
        data[1234, 0] = value
        return write_source(tmp / "nonfinite.wav", data, subtype="FLOAT")

    return build


BAD_INPUTS = [
    ("missing", make_missing, AudioReadError, "not found"),
    ("zero-length", make_empty, AudioReadError, "empty"),
    ("text as .wav", make_text("notes.wav"), AudioReadError, "not readable as audio"),
    ("text as .flac", make_text("notes.flac"), AudioReadError, "not readable as audio"),
    ("text as .mp3", make_text("notes.mp3"), AudioReadError, "not readable as audio"),
    ("garbage RIFF header", make_garbage_riff, AudioReadError, "not readable as audio"),
    ("corrupt fmt chunk", make_corrupt_fmt, AudioReadError, "not readable as audio"),
    ("WAV cut in data", make_truncated("wav", "PCM_24"), AudioReadError, "truncated"),
    ("WAV cut near end", make_truncated("wav", "PCM_16", 0.999), AudioReadError, "truncated"),
    ("AIFF cut in data", make_truncated("aiff", "PCM_16"), AudioReadError, "truncated"),
    ("FLAC cut", make_truncated("flac", "PCM_24"), AudioReadError, "truncated"),
    pytest.param(
        "MP3 cut",
        make_truncated("mp3", "MPEG_LAYER_III"),
        AudioReadError,
        "truncated",
        marks=needs_mp3,
    ),
    ("no frames", make_zero_frames, AudioReadError, "no audio"),
    ("NaN in float WAV", make_non_finite(float("nan")), InvalidAudioError, "frame 1234"),
    ("Inf in float WAV", make_non_finite(float("inf")), InvalidAudioError, "NaN or Inf"),
]


@pytest.mark.parametrize(("case", "build", "error", "fragment"), BAD_INPUTS)
def test_bad_input_raises_a_typed_error_naming_the_file(tmp_path, case, build, error, fragment):
    path = build(tmp_path)
    with pytest.raises(error, match=fragment) as exc:
        read_audio(path)
    assert_names_file(exc, path)
    assert exc.value.path == str(path)


def test_wav_with_a_chunk_after_the_data_is_not_truncated(tmp_path):
    path = write_source(tmp_path / "list.wav", stereo_signal(RATE, 480))
    data = bytearray(path.read_bytes()) + b"LIST" + struct.pack("<I", 4) + b"INFO"
    data[4:8] = struct.pack("<I", len(data) - 8)
    path.write_bytes(bytes(data))
    assert read_audio(path)[0].shape == (2, 480)


def test_streamed_wav_with_unknown_data_size_is_read_to_the_end(tmp_path):
    path = write_source(tmp_path / "streamed.wav", stereo_signal(RATE, 480))
    data = bytearray(path.read_bytes())
    size_at = data.find(b"data") + 4
    data[size_at : size_at + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    assert read_audio(path)[0].shape == (2, 480)


def test_read_refuses_a_target_rate_out_of_range(tmp_path):
    path = write_source(tmp_path / "in.wav", stereo_signal(RATE, 480))
    with pytest.raises(InvalidParameterError, match="target_rate"):
        read_audio(path, target_rate=500_000)


def test_flac_header_declaring_absurd_length_is_a_read_error(tmp_path):
    path = write_source(tmp_path / "huge.flac", np.zeros((4800, 2), np.float32), subtype="PCM_16")
    data = bytearray(path.read_bytes())
    packed = int.from_bytes(data[18:26], "big") | (2**36 - 1)  # STREAMINFO total samples
    data[18:26] = packed.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    with pytest.raises(AudioReadError) as exc:
        read_audio(path)
    assert_names_file(exc, path)


@needs_mp3
def test_mp3_without_a_length_tag_reads_what_decodes(tmp_path):
    path = write_source(
        tmp_path / "tagged.mp3", stereo_signal(RATE, RATE), subtype="MPEG_LAYER_III"
    )
    data = bytearray(path.read_bytes())
    for tag in (b"Xing", b"Info"):  # without it, libsndfile estimates the length
        at = data.find(tag)
        if at >= 0:
            data[at : at + 4] = bytes(4)
    cut = tmp_path / "untagged.mp3"
    cut.write_bytes(bytes(data[: len(data) // 2]))

    audio, info = read_audio(cut)

    assert info.frames > 0 and audio.shape[1] > 0 and audio.is_contiguous()  # no truncation error


def test_stereo_buffer_grows_and_compacts():
    from mastering.audio.read import _StereoBuffer

    chunk = np.arange(14, dtype=np.float32).reshape(7, 2)
    short = _StereoBuffer(10)
    short.append(chunk)
    np.testing.assert_array_equal(short.finish(), chunk.T)
    assert short.finish().flags.c_contiguous
    grown = _StereoBuffer(4)
    grown.append(chunk)
    grown.append(chunk)
    np.testing.assert_array_equal(grown.finish(), np.concatenate([chunk, chunk]).T)


def test_quantize_tensor_is_bit_identical_to_quantize_and_writes_the_same_file(tmp_path):
    """Samples quantized where they are (a GPU in the farm) give the same bytes as the float
    path: random values, exact LSB steps, half-LSB ties and both clip edges."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-1.2, 1.2, (2, 50_000)).astype(np.float32)
    lsb = 2.0**-23
    x[0, :8] = [1.0, -1.0, 1.0 - lsb, -1.0 + lsb, 0.5 * lsb, -0.5 * lsb, 1.5 * lsb, 2.5 * lsb]
    expected = quantize(x.T.copy(), 24, None).T
    got = quantize_tensor(torch.from_numpy(x), 24).numpy()
    assert got.dtype == np.int32 and np.array_equal(got, expected)
    write_audio(tmp_path / "float.wav", x, format="wav24")
    write_audio(tmp_path / "int.wav", torch.from_numpy(got), format="wav24")
    assert (tmp_path / "int.wav").read_bytes() == (tmp_path / "float.wav").read_bytes()


def test_prequantized_samples_must_fit_the_format(tmp_path):
    q = quantize_tensor(torch.zeros(2, 100))
    for kwargs in ({"format": "wav16"}, {"format": "wav24", "out_rate": 44_100}):
        with pytest.raises(InvalidParameterError) as err:
            write_audio(tmp_path / "x.wav", q, **kwargs)
        assert "x.wav" in str(err.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("container", ["WAV", "FLAC", "AIFF"])
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
@pytest.mark.parametrize("channels", [1, 2])
def test_integer_pcm_reads_as_libsndfiles_floats(tmp_path, container, subtype, channels):
    """16/24-bit PCM decoded as integers and scaled here gives libsndfile's own floats, bit
    for bit: both extremes, every block boundary, mono duplicated, both read paths."""
    from mastering.audio.read import BLOCK_FRAMES, INTEGER_READS

    bits = 16 if subtype == "PCM_16" else 24
    rng = np.random.default_rng(bits + channels)
    n = BLOCK_FRAMES * 2 + 777
    ints = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (n, channels))
    ints[:2] = [[-(2 ** (bits - 1))] * channels, [2 ** (bits - 1) - 1] * channels]
    path = tmp_path / f"x.{container.lower()}"
    sf.write(path, (ints << (32 - bits)).astype(np.int32), 48_000, subtype, format=container)
    assert subtype in INTEGER_READS
    want, _ = sf.read(path, dtype="float32", always_2d=True)
    want = np.repeat(want, 2, axis=1) if channels == 1 else want
    got, info = read_audio(path)
    assert info.subtype == subtype
    assert got.dtype == torch.float32 and np.array_equal(got.numpy(), want.T)
    blocks = torch.cat(list(iter_audio_blocks(path, block_frames=10_000)), dim=1)
    assert np.array_equal(blocks.numpy(), want.T)
