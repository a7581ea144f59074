"""The chains the stage groups multiplex, by name (Serve's multiplexed model id).

A name is one of

* ``"default"``: the shipped chain (``Chain.pretrained()``);
* a style adapter from :mod:`mastering.adapters` (``available_adapters()``, attached with
  ``apply_adapter(chain, name)``), when that module is installed;
* a built-in chain variant (:data:`VARIANTS`): the shipped weights under another
  :class:`~mastering.chain.ChainConfig` (stages blended or bypassed).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from types import ModuleType

from mastering.chain import Chain, ChainConfig
from mastering.errors import InvalidParameterError
from serving.batch import DEFAULT_ADAPTER

#: Built-in chain variants: name -> ChainConfig fields.
VARIANTS: dict[str, dict] = {
    # Half-wet dynamics and harmonics: a lighter touch than the default chain.
    "gentle": {"wet": {"compressor": 0.5, "exciter": 0.5, "reverb": 0.5}},
    # No added ambience.
    "dry": {"bypass": ("reverb",)},
}


def use_adapter_dir(folder: str | None) -> None:
    """Look for user adapters in ``folder`` in this process (``None``: leave as it is)."""
    module = _adapters_module()
    if folder is not None and module is not None:
        os.environ[module.ENV_DIR] = folder


def _adapters_module() -> ModuleType | None:
    if importlib.util.find_spec("mastering.adapters") is None:
        return None
    return importlib.import_module("mastering.adapters")


def style_adapters() -> list[str]:
    """Names of the trained style adapters (empty while :mod:`mastering.adapters` is absent)."""
    module = _adapters_module()
    return [] if module is None else list(module.available_adapters())


def adapter_names() -> list[str]:
    """Every name :func:`load_chain` takes: default, style adapters, built-in variants."""
    return [DEFAULT_ADAPTER, *style_adapters(), *VARIANTS]


@functools.lru_cache(maxsize=8)
def _folder_genres(folder: str) -> frozenset[str]:
    from mastering.adapter_folder import GenreAdapters

    return frozenset(GenreAdapters(folder).genres())


def genre_adapter(folder: str | None, genre: str) -> str | None:
    """The name of ``folder``'s adapter for ``genre`` (``genre-<genre>``,
    :mod:`mastering.adapter_folder`), ``None`` without one. The folder is read once per
    process (a promoted version's folder never changes)."""
    if folder is None or genre not in _folder_genres(folder):
        return None
    from mastering.adapters import genre_adapter_name

    return genre_adapter_name(genre)


def check_adapter(name: str) -> str:
    """``name`` if :func:`load_chain` takes it; otherwise :class:`InvalidParameterError`
    listing the valid names."""
    valid = adapter_names()
    if name not in valid:
        raise InvalidParameterError(f"unknown adapter {name!r}; valid: {', '.join(valid)}")
    return name


def load_chain(name: str, device: str = "cpu") -> Chain:
    """The chain called ``name`` on ``device``, in eval mode."""
    if name in VARIANTS:
        return Chain.pretrained(ChainConfig(**VARIANTS[name])).to(device).eval()
    chain = Chain.pretrained()
    if name != DEFAULT_ADAPTER:
        module = _adapters_module()
        if module is None or name not in module.available_adapters():
            check_adapter(name)
        chain = module.apply_adapter(chain, name)
    return chain.to(device).eval()


@functools.lru_cache(maxsize=8)
def spec_chain(name: str) -> Chain:
    """A CPU copy of the chain called ``name``, loaded once per process: where the ingress
    takes parameter specs and the chain config from (no audio runs through it there)."""
    return load_chain(name, "cpu")
