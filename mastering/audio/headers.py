"""Container-header checks that libsndfile does not make for us.

libsndfile silently reads what is left of a truncated PCM WAV or AIFF: it shrinks the frame
count to the bytes present and reports a shorter, valid-looking file. Lacquer treats that as
an error, so these helpers read the *declared* length straight from the header:

* WAV / WAVEX / RIFX: ``data`` chunk size // ``fmt `` block align. Sizes ``0`` and
  ``0xFFFFFFFF`` are the placeholders streaming writers leave; they mean "unknown" and the
  file is trusted to end where the bytes end.
* RF64: the 64-bit data size from the ``ds64`` chunk (when ``data`` says ``0xFFFFFFFF``).
* AIFF / AIFF-C: ``numSampleFrames`` from the ``COMM`` chunk.

Compressed formats carry their own length (FLAC STREAMINFO, the Ogg end granule, an MP3
Xing/Info/VBRI tag) and are checked after decoding instead: see :mod:`mastering.audio.read`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

#: Subtypes whose frames have a fixed byte size (``block align``), so a byte count is a frame count.
FIXED_FRAME_SIZE_SUBTYPES = frozenset(
    {"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"}
)
_RIFF_FORMATS = frozenset({"WAV", "WAVEX", "RF64"})
_UNKNOWN_SIZE_PLACEHOLDERS = frozenset({0, 0xFFFFFFFF})
_MAX_CHUNKS = 4096
_MP3_LENGTH_TAGS = (b"Xing", b"Info", b"VBRI")


def declared_frames(path: str | Path, container: str, subtype: str) -> int | None:
    """Frame count the header of a PCM WAV/RF64/AIFF file declares, or ``None`` if unknown.

    ``container`` and ``subtype`` are libsndfile's names (``"WAV"``, ``"PCM_24"``). Returns
    ``None`` for other containers, compressed subtypes, streamed-length placeholders and
    headers this parser does not understand (libsndfile has already accepted the file).
    """
    if subtype not in FIXED_FRAME_SIZE_SUBTYPES:
        return None
    with open(path, "rb") as f:
        if container in _RIFF_FORMATS:
            return _riff_declared_frames(f)
        if container == "AIFF":
            return _aiff_declared_frames(f)
    return None


def mp3_length_is_exact(path: str | Path) -> bool:
    """True if the MP3's first frame carries a Xing/Info/VBRI tag (an exact frame count).

    Without one, libsndfile estimates the length from the file size and bitrate, so a
    shortfall after decoding is not evidence of truncation.
    """
    with open(path, "rb") as f:
        f.seek(_id3v2_tag_size(f.read(10)))
        head = f.read(4096)
    sync = _first_mpeg_sync(head)
    return sync is not None and any(tag in head[sync : sync + 200] for tag in _MP3_LENGTH_TAGS)


def _riff_declared_frames(f: BinaryIO) -> int | None:
    head = f.read(12)
    if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX", b"RF64"):
        return None
    endian = ">" if head[:4] == b"RIFX" else "<"
    block_align: int | None = None
    ds64_data_size: int | None = None
    for chunk_id, size, body in _iter_chunks(f, 12, endian):
        if chunk_id == b"ds64":
            ds64_data_size = _unpack_at(f, body + 8, endian + "Q")
        elif chunk_id == b"fmt ":
            block_align = _unpack_at(f, body + 12, endian + "H")
        elif chunk_id == b"data":
            if head[:4] == b"RF64" and size == 0xFFFFFFFF:
                size = ds64_data_size if ds64_data_size is not None else 0
            if size in _UNKNOWN_SIZE_PLACEHOLDERS or not block_align:
                return None
            return size // block_align
    return None


def _aiff_declared_frames(f: BinaryIO) -> int | None:
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"FORM" or head[8:12] not in (b"AIFF", b"AIFC"):
        return None
    for chunk_id, _size, body in _iter_chunks(f, 12, ">"):
        if chunk_id == b"COMM":
            frames = _unpack_at(f, body + 2, ">I")
            return frames or None
    return None


def _iter_chunks(f: BinaryIO, start: int, endian: str) -> Iterator[tuple[bytes, int, int]]:
    """Yields ``(chunk id, declared size in bytes, offset of the chunk body)`` of IFF chunks."""
    file_size = os.fstat(f.fileno()).st_size
    pos = start
    for _ in range(_MAX_CHUNKS):
        if pos + 8 > file_size:
            return
        f.seek(pos)
        header = f.read(8)
        size = struct.unpack(endian + "I", header[4:8])[0]
        yield header[:4], size, pos + 8
        pos += 8 + size + (size & 1)  # chunks are padded to an even length


def _unpack_at(f: BinaryIO, offset: int, fmt: str) -> int | None:
    f.seek(offset)
    raw = f.read(struct.calcsize(fmt))
    return struct.unpack(fmt, raw)[0] if len(raw) == struct.calcsize(fmt) else None


def _id3v2_tag_size(head: bytes) -> int:
    """Bytes taken by a leading ID3v2 tag (header, syncsafe body, optional footer), else 0."""
    if len(head) < 10 or head[:3] != b"ID3":
        return 0
    body = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
    footer = 10 if head[5] & 0x10 else 0
    return 10 + body + footer


def _first_mpeg_sync(data: bytes) -> int | None:
    for i in range(len(data) - 1):
        if data[i] == 0xFF and data[i + 1] & 0xE0 == 0xE0:
            return i
    return None
