"""Grouping songs of equal length, so each group runs as one batch without padding (a padded
song's controllers would hear the silence: its master would depend on its batch)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

T = TypeVar("T")


def equal_length_groups(items: Iterable[T], length: Callable[[T], Hashable]) -> list[list[T]]:
    """``items`` grouped by ``length(item)`` (samples), groups in order of first appearance,
    items in their order within each group."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(length(item), []).append(item)
    return list(groups.values())
