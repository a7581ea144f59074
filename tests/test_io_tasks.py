"""The decode/write task bodies of ``--io tasks`` (actors.io_tasks), called directly: errors
come back as values naming the file, and a song read then written gives the same bytes as
``write_audio``."""

from __future__ import annotations

import numpy as np

from actors.io_tasks import read_song, write_song
from mastering.errors import AudioReadError, AudioWriteError
from mastering.io import quantize_tensor, read_audio, write_audio
from mastering.testsignals import music_like


def test_a_song_read_and_written_by_the_tasks_matches_write_audio(tmp_path):
    src = tmp_path / "mix.wav"
    write_audio(src, music_like(1.5, seed=3), format="wav24")
    (samples, info), seconds = read_song(str(src))
    assert isinstance(samples, np.ndarray) and samples.shape == (2, 72_000) and seconds > 0
    assert info.sample_rate == 48_000
    dest, _ = write_song(samples, str(tmp_path / "out.wav"), 48_000, "wav24")
    write_audio(tmp_path / "ref.wav", read_audio(src)[0], format="wav24")
    assert dest.read_bytes() == (tmp_path / "ref.wav").read_bytes()
    # Pre-quantized int32 samples (as a GPU worker sends them) give the same file too.
    q = quantize_tensor(read_audio(src)[0]).numpy()
    dest_q, _ = write_song(q, str(tmp_path / "q.wav"), 48_000, "wav24")
    assert dest_q.read_bytes() == dest.read_bytes()


def test_errors_come_back_as_values_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(200))
    err, _ = read_song(str(corrupt))
    assert isinstance(err, AudioReadError) and "corrupt.wav" in str(err)
    missing_dir = tmp_path / "nowhere" / "out.wav"
    err, _ = write_song(np.zeros((2, 100), np.float32), str(missing_dir), 48_000, "wav24")
    assert isinstance(err, AudioWriteError) and "out.wav" in str(err)
