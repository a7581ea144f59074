"""Style adapters: tiny per-style modifications of the chain's controllers, saved by name.

An adapter holds, for every stage with a learned controller (all but ``master_out``), a
:class:`StageAdapter`:

* a **FiLM** of the conditioning vector the stage's residual network reads,
  ``vector * (1 + gamma) + beta`` (``gamma, beta``: ``[cond_dim]``);
* a **macro offset** added to the conditioning macros the stage's analytic prior reads
  (``[len(MACROS)]``, the same units as the macros, result clamped to ``[-1.5, 1.5]``);
* a **raw bias** per parameter, added to the residual's raw-space output (for every parameter
  the residual predicts; time-varying parameters get the same offset in every frame).

All start at zero, so a fresh adapter changes nothing. An adapter is a few hundred numbers
(about 2 KB as float32 safetensors). :func:`apply_adapter` returns a copy of a chain with the
adapter attached to its stages (:meth:`mastering.stages.base.Stage.attach_adapter`); the copy
masters, streams and trains like any chain, and the original is untouched.

Names and places
----------------
Adapters are ``NAME.safetensors`` files, looked up first in the directory named by the
environment variable ``LACQUER_ADAPTER_DIR`` (user adapters; a user file shadows a shipped one
of the same name), then in ``mastering/weights/adapters/`` (shipped). Names are lower-case
letters, digits, ``-``, ``_`` and ``.``. Conventions: ``genre-<genre>`` (trained on songs of
one genre), ``cluster-<k>`` (trained on one k-means cluster of songs grouped by their mixing
features; the file also holds the cluster's centroid and the feature normalization, so
:func:`choose_adapter` can route a new song to its nearest cluster).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mastering.conditioning import MACROS, Conditioning, ConditioningEncoder
from mastering.errors import InvalidParameterError, LacquerError
from mastering.features import crest_factor_db, mid_side_band_spectrum_db, normalized_tilt_db
from mastering.stages.base import Params, StageContext

if TYPE_CHECKING:
    from mastering.chain import Chain

#: Environment variable naming a directory of user adapters.
ENV_DIR = "LACQUER_ADAPTER_DIR"
#: Shipped adapters.
SHIPPED_DIR = Path(__file__).parent / "weights" / "adapters"
#: File-format marker and version stored in the safetensors metadata.
FORMAT = "lacquer-adapter"
FORMAT_VERSION = "1"
#: Stages an adapter acts on (``master_out`` has nothing learned).
ADAPTED_STAGES: tuple[str, ...] = ("eq", "compressor", "exciter", "imager", "reverb", "limiter")
#: Adapter kinds.
KINDS = ("genre", "cluster", "user")

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_CLUSTER_KEYS = ("cluster.centroid", "cluster.mean", "cluster.std")


class InvalidAdapterError(LacquerError):
    """An adapter file cannot be used (unreadable, not an adapter, or for another chain)."""


# -- the modules ------------------------------------------------------------------------------


class StageAdapter(nn.Module):
    """The adapter of one stage (see the module docstring).

    Args:
        param_sizes: parameter name -> number of values (the stage's :class:`ParamSpec` sizes).
        cond_dim: size of the conditioning vector.
        n_macros: number of macros.
    """

    def __init__(self, param_sizes: Mapping[str, int], cond_dim: int, n_macros: int = len(MACROS)):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(cond_dim))
        self.beta = nn.Parameter(torch.zeros(cond_dim))
        self.macro_offset = nn.Parameter(torch.zeros(n_macros))
        self.bias = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(size)) for name, size in param_sizes.items()}
        )

    def context(self, ctx: StageContext) -> StageContext:
        """The context with the FiLM-ed vector and the offset macros."""
        cond = ctx.cond
        v = cond.vector
        vector = v * (1.0 + self.gamma.to(v.dtype)) + self.beta.to(v.dtype)
        macros = (cond.macros + self.macro_offset.to(cond.macros.dtype)).clamp(-1.5, 1.5)
        return dataclasses.replace(
            ctx, cond=dataclasses.replace(cond, vector=vector, macros=macros)
        )

    def offsets(self, delta: Params) -> Params:
        """Raw-space residual outputs plus the biases (only for parameters the residual
        predicts; ``[batch, size]`` or ``[batch, size, frames]``)."""
        out = dict(delta)
        for name, d in delta.items():
            if name in self.bias:
                b = self.bias[name].to(d.dtype)
                out[name] = d + (b.view(1, -1, 1) if d.dim() == 3 else b.view(1, -1))
        return out


class StyleAdapter(nn.Module):
    """One adapter for the chain: a :class:`StageAdapter` per stage of :data:`ADAPTED_STAGES`.

    Attributes:
        name: the adapter's name (its file stem).
        kind: ``"genre"``, ``"cluster"`` or ``"user"``.
        target: the genre or cluster index it was trained for (``""`` if none).
        cluster: for cluster adapters, ``{"centroid": [d], "mean": [d], "std": [d]}`` of
            :func:`mix_embedding` space; else ``None``.
        info: free-form metadata (strings) stored in the file.
    """

    def __init__(
        self,
        name: str = "adapter",
        kind: str = "user",
        target: str = "",
        cond_dim: int | None = None,
    ):
        super().__init__()
        from mastering.chain import stage_class

        check_name(name)
        if kind not in KINDS:
            raise InvalidParameterError(f"unknown adapter kind {kind!r}; valid: {', '.join(KINDS)}")
        cond_dim = ConditioningEncoder().cond_dim if cond_dim is None else cond_dim
        self.name, self.kind, self.target = name, kind, target
        self.cluster: dict[str, Tensor] | None = None
        self.info: dict[str, str] = {}
        self.stages = nn.ModuleDict(
            {
                s: StageAdapter({p.name: p.size for p in stage_class(s).specs}, cond_dim)
                for s in ADAPTED_STAGES
            }
        )

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# -- names and files --------------------------------------------------------------------------


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid adapter name, else raise :class:`InvalidParameterError`."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidParameterError(
            f"invalid adapter name {name!r}: use 1-64 lower-case letters, digits, '-', '_', '.'"
        )
    return name


def adapter_dirs() -> list[Path]:
    """Directories searched, in order: ``$LACQUER_ADAPTER_DIR`` (if set), then the shipped."""
    dirs = []
    user = os.environ.get(ENV_DIR)
    if user:
        dirs.append(Path(user))
    dirs.append(SHIPPED_DIR)
    return dirs


def _index() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in adapter_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.safetensors")):
                if _NAME.match(f.stem):
                    found.setdefault(f.stem, f)
    return found


def available_adapters() -> list[str]:
    """Names of every adapter found (user and shipped), sorted."""
    return sorted(_index())


def adapter_path(name: str) -> Path:
    """The file of adapter ``name``; raises :class:`InvalidParameterError` listing the valid
    names if there is none."""
    check_name(name)
    index = _index()
    if name not in index:
        valid = ", ".join(sorted(index)) or "none installed"
        raise InvalidParameterError(f"unknown adapter {name!r}; valid: {valid}")
    return index[name]


def save_adapter(
    adapter: StyleAdapter, directory: str | Path | None = None, name: str | None = None
) -> Path:
    """Write ``adapter`` as ``<directory>/<name>.safetensors`` atomically (temp file + rename).

    Args:
        adapter: the adapter.
        directory: where to write (default: ``$LACQUER_ADAPTER_DIR`` if set, else the shipped
            directory).
        name: file stem (default ``adapter.name``).

    Returns:
        The path written.
    """
    name = check_name(name or adapter.name)
    if directory is None:
        directory = os.environ.get(ENV_DIR) or SHIPPED_DIR
    directory = Path(directory)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in adapter.state_dict().items()}
    if adapter.cluster is not None:
        for key in _CLUSTER_KEYS:
            tensors[key] = adapter.cluster[key.split(".")[1]].detach().float().cpu().contiguous()
    meta = {
        **{k: str(v) for k, v in adapter.info.items()},
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "kind": adapter.kind,
        "target": adapter.target,
    }
    from safetensors.torch import save_file

    path = directory / f"{name}.safetensors"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; adapters are shared data
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise InvalidAdapterError(f"cannot write adapter: {exc.strerror or exc}", path) from exc
    return path


def read_adapter_file(path: str | Path) -> StyleAdapter:
    """Load an adapter from a file; raises :class:`InvalidAdapterError` naming the file if it
    is unreadable, not a Lacquer adapter, or shaped for another chain."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises its own error types
        raise InvalidAdapterError(f"not a readable safetensors file ({exc})", path) from exc
    if meta.get("format") != FORMAT:
        raise InvalidAdapterError("not a Lacquer adapter (format metadata missing)", path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise InvalidAdapterError(
            f"adapter format version {meta.get('format_version')} is not {FORMAT_VERSION}", path
        )
    kind = meta.get("kind", "user")
    adapter = StyleAdapter(
        name=path.stem, kind=kind if kind in KINDS else "user", target=meta.get("target", "")
    )
    cluster = {k.split(".")[1]: tensors.pop(k) for k in _CLUSTER_KEYS if k in tensors}
    if cluster:
        if len(cluster) != len(_CLUSTER_KEYS):
            raise InvalidAdapterError("incomplete cluster description", path)
        adapter.cluster = cluster
    expected = adapter.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or extra or wrong:
        raise InvalidAdapterError(
            "adapter does not fit this chain (missing "
            f"{missing[:3]}, unexpected {extra[:3]}, wrong shapes {wrong[:3]})",
            path,
        )
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise InvalidAdapterError("adapter contains NaN or Inf values", path)
    adapter.load_state_dict(tensors)
    adapter.info = {
        k: v for k, v in meta.items() if k not in ("format", "format_version", "kind", "target")
    }
    return adapter


def load_adapter(name: str) -> StyleAdapter:
    """Load adapter ``name`` (see :func:`available_adapters`)."""
    return read_adapter_file(adapter_path(name))


def attach(chain: Chain, adapter: StyleAdapter | None) -> Chain:
    """Attach ``adapter`` to ``chain``'s stages **in place** (``None`` detaches); returns
    ``chain``. The adapter's weights become part of the chain's parameters (for training)."""
    for s in ADAPTED_STAGES:
        if s in chain.stages:
            chain.stages[s].attach_adapter(None if adapter is None else adapter.stages[s])
    chain.adapter_name = None if adapter is None else adapter.name
    return chain


def apply_adapter(chain: Chain, adapter: str | StyleAdapter | None) -> Chain:
    """A copy of ``chain`` with the adapter attached (by name, or an adapter object; ``None``:
    a copy without any). The copy is on the chain's device and in its train/eval mode; the
    original chain is not modified. Unknown names raise :class:`InvalidParameterError`
    listing the valid ones."""
    if isinstance(adapter, str):
        adapter = load_adapter(adapter)
    elif adapter is not None:
        adapter = copy.deepcopy(adapter)
    out = copy.deepcopy(chain)
    attach(out, None)
    if adapter is not None:
        try:
            ref = next(chain.parameters())
            adapter = adapter.to(ref.device)
        except StopIteration:
            pass
        attach(out, adapter)
        adapter.train(chain.training)
    return out


# -- choosing one ---------------------------------------------------------------------------


@torch.no_grad()
def mix_embedding(x: Tensor) -> Tensor:
    """Mixing-feature embedding of songs for clustering: ``x [batch, 2, samples]`` ->
    ``[batch, 24]``: the mid spectrum shape on 10 bands (dB), side-minus-mid on 10 bands (dB),
    crest factor (dB), L/R correlation, and the spread (std) and 95-50 percentile range of the
    10 ms frame levels (dB). Level-independent (shapes and ratios only)."""
    from mastering.dsp.stereo import correlation
    from mastering.features import frame_rms_db

    spec = mid_side_band_spectrum_db(x)  # [b, 2, 40]
    p = torch.pow(10.0, spec / 10.0).unflatten(-1, (10, 4)).mean(-1)
    db = 10.0 * torch.log10(p + 1e-10)
    shape = normalized_tilt_db(db[:, 0]).clamp(min=-60.0)
    side = (db[:, 1] - db[:, 0]).clamp(-40.0, 20.0)
    rms = frame_rms_db(x)
    active = rms > rms.amax(-1, keepdim=True) - 40.0
    stats = []
    for b in range(x.shape[0]):
        r = rms[b][active[b]]
        stats.append(
            torch.stack([r.std(unbiased=False), torch.quantile(r, 0.95) - torch.quantile(r, 0.5)])
        )
    extra = torch.stack([crest_factor_db(x), correlation(x)], dim=-1)  # [b, 2]
    return torch.cat([shape, side, extra, torch.stack(stats)], dim=-1).float()


def genre_adapter_name(genre: str) -> str:
    return f"genre-{genre}"


def choose_adapter(
    x: Tensor | None = None,
    conditioning: Conditioning | None = None,
    by: str = "style",
    available: Sequence[str] | None = None,
) -> str | None:
    """Pick an adapter for a song: ``by="style"``: the genre adapter of the conditioning's
    (resolved) genre; ``by="cluster"``: the cluster adapter whose centroid is nearest to the
    song's :func:`mix_embedding` (``x [1, 2, samples]`` needed). ``None`` when none fits."""
    names = list(available_adapters() if available is None else available)
    if by == "style":
        if conditioning is None:
            raise InvalidParameterError("choosing an adapter by style needs a conditioning")
        name = genre_adapter_name(conditioning.validate().resolved_genre())
        return name if name in names else None
    if by == "cluster":
        if x is None:
            raise InvalidParameterError("choosing an adapter by cluster needs the audio")
        emb = mix_embedding(x[:1].float().cpu())[0]
        best, best_d = None, float("inf")
        for name in names:
            if not name.startswith("cluster-"):
                continue
            a = load_adapter(name)
            if a.cluster is None:
                continue
            z = (emb - a.cluster["mean"]) / a.cluster["std"]
            d = float((z - a.cluster["centroid"]).square().sum())
            if d < best_d:
                best, best_d = name, d
        return best
    raise InvalidParameterError(f"unknown adapter choice {by!r}; valid: style, cluster")
