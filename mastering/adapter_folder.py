"""The genre adapters of one folder, e.g. the version ``lacquer improve`` promoted.

A folder of ``genre-<genre>.safetensors`` style adapters (:mod:`mastering.adapters`) masters
each song with the base chain plus the adapter of the song's genre (the conditioning's
resolved genre), or with the base chain alone when the folder has no adapter for that genre:
the rule ``lacquer improve`` scored the version with on its held-out songs, so what it
promoted is what gets used. The folder is a plain path, so the render farm's workers and the
Serve replicas take it without knowing where it came from (``tuning.improve.current_adapter_dir``
finds the promoted one on the driver side).

Two ways to use it: :meth:`GenreAdapters.chain_for` returns a copy of a chain with the adapter
attached (one copy per genre, cached; ``lacquer master``), :meth:`GenreAdapters.attach`
attaches it to a chain in place (a farm worker, once per batch of one genre).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mastering.adapters import (
    StyleAdapter,
    apply_adapter,
    attach,
    genre_adapter_name,
    read_adapter_file,
)
from mastering.chain import Chain
from mastering.conditioning import Conditioning
from mastering.errors import InvalidParameterError


class GenreAdapters:
    """The ``genre-<genre>`` adapters of ``folder`` (read on first use, then cached).

    Attributes:
        folder: the adapter folder.
        version: its name (a promoted version's folder is named ``v0001``, ``v0002``...).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InvalidParameterError("adapter folder does not exist", self.folder)
        self.version = self.folder.name
        self._adapters: dict[str, StyleAdapter | None] = {}
        self._chains: dict[tuple[int, str], Chain] = {}

    def genres(self) -> list[str]:
        """Genres the folder has an adapter for, sorted."""
        prefix = genre_adapter_name("")
        return sorted(
            p.stem[len(prefix) :] for p in self.folder.glob(f"{prefix}*.safetensors") if p.is_file()
        )

    def adapter(self, genre: str) -> StyleAdapter | None:
        """The adapter of ``genre`` (``None``: the folder has none for it). An unreadable file
        raises :class:`mastering.adapters.InvalidAdapterError` naming it."""
        if genre not in self._adapters:
            path = self.folder / f"{genre_adapter_name(genre)}.safetensors"
            self._adapters[genre] = read_adapter_file(path).eval() if path.is_file() else None
        return self._adapters[genre]

    def chain_for(self, chain: Chain, genre: str) -> Chain:
        """``chain`` with the adapter of ``genre`` attached (a cached copy; ``chain`` itself
        when the folder has none for it)."""
        adapter = self.adapter(genre)
        if adapter is None:
            return chain
        key = (id(chain), genre)
        if key not in self._chains:
            self._chains[key] = apply_adapter(chain, adapter)
        return self._chains[key]

    def attach(self, chain: Chain, conditionings: Sequence[Conditioning]) -> str | None:
        """Attach the adapter of the songs' genre to ``chain`` in place (detach any when the
        folder has none for it); the adapter's name, or ``None``. The songs must share one
        genre (a batch runs through one chain): mixed genres raise
        :class:`InvalidParameterError`."""
        genres = sorted({c.resolved_genre() for c in conditionings})
        if len(genres) > 1:
            raise InvalidParameterError(
                f"a batch mixes genres {genres}; with genre adapters each batch must hold one"
            )
        adapter = self.adapter(genres[0]) if genres else None
        if adapter is not None:
            adapter = adapter.to(next(chain.parameters()).device)
        attach(chain, adapter)
        return None if adapter is None else adapter.name
