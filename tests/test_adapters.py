"""Style adapters: identity at init, save/load by name, user directory, choice by style and
by cluster, errors naming the file, and gradients reaching the adapter."""

from __future__ import annotations

import pytest
import torch

from mastering import adapters as A
from mastering.chain import Chain
from mastering.conditioning import Conditioning
from mastering.errors import InvalidParameterError
from mastering.testsignals import music_like

COND = Conditioning(genre="jazz", tempo_bpm=100.0, energy=0.5, vocal_ratio=0.3)


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Isolated shipped and user adapter directories."""
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    shipped.mkdir()
    user.mkdir()
    monkeypatch.setattr(A, "SHIPPED_DIR", shipped)
    monkeypatch.setenv(A.ENV_DIR, str(user))
    return shipped, user


@pytest.fixture(scope="module")
def chain():
    return Chain().eval()


@pytest.fixture(scope="module")
def audio():
    return music_like(1.5, seed=3).unsqueeze(0)


def _nudged(name: str, kind: str = "genre", target: str = "jazz") -> A.StyleAdapter:
    a = A.StyleAdapter(name, kind, target)
    with torch.no_grad():
        a.stages["eq"].bias["high_shelf_db"].fill_(1.0)
        a.stages["compressor"].macro_offset[4] = 0.5  # glue
        a.stages["limiter"].gamma.fill_(0.3)
    return a


def test_fresh_adapter_is_identity_and_original_untouched(chain, audio):
    adapted = A.apply_adapter(chain, A.StyleAdapter("x"))
    with torch.no_grad():
        base = chain(audio, COND).audio
        out = adapted(audio, COND).audio
    torch.testing.assert_close(out, base, rtol=0, atol=1e-6)
    assert not any("adapter" in k for k in chain.state_dict())
    assert any("adapter" in k for k in adapted.state_dict())


def test_adapter_changes_parameters(chain, audio):
    adapted = A.apply_adapter(chain, _nudged("genre-jazz"))
    with torch.no_grad():
        p0, p1 = chain(audio, COND).params, adapted(audio, COND).params
    assert p1["eq"]["high_shelf_db"].item() > p0["eq"]["high_shelf_db"].item() + 0.5
    assert p1["compressor"]["ratio"].item() > p0["compressor"]["ratio"].item()
    # Only what the residual predicts is offset: the limiter's measured trim is not.
    lim = A.StyleAdapter("y").stages["limiter"]
    with torch.no_grad():
        lim.bias["trim_db"].fill_(5.0)
        lim.bias["drive_db"].fill_(1.0)
    delta = lim.offsets({"drive_db": torch.zeros(1, 1)})
    assert set(delta) == {"drive_db"} and delta["drive_db"].item() == 1.0


def test_save_load_round_trip_small_and_listed(dirs):
    _, user = dirs
    a = _nudged("genre-jazz")
    a.info["songs"] = "12"
    path = A.save_adapter(a)
    assert path.parent == user and path.stat().st_size < 16_000
    assert A.available_adapters() == ["genre-jazz"]
    b = A.load_adapter("genre-jazz")
    assert (b.kind, b.target, b.info["songs"]) == ("genre", "jazz", "12")
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v)
    assert not list(user.glob("*.tmp"))


def test_user_dir_shadows_shipped(dirs):
    shipped, user = dirs
    A.save_adapter(A.StyleAdapter("genre-edm", "genre", "edm"), shipped)
    A.save_adapter(_nudged("genre-edm", target="edm"), user)
    A.save_adapter(A.StyleAdapter("genre-pop", "genre", "pop"), shipped)
    assert A.available_adapters() == ["genre-edm", "genre-pop"]
    assert A.adapter_path("genre-edm").parent == user
    assert A.load_adapter("genre-edm").stages["eq"].bias["high_shelf_db"][0].item() == 1.0


def test_unknown_and_invalid_names(dirs, chain):
    A.save_adapter(A.StyleAdapter("genre-pop", "genre", "pop"))
    with pytest.raises(InvalidParameterError, match=r"unknown adapter 'nope'; valid: genre-pop"):
        A.apply_adapter(chain, "nope")
    with pytest.raises(InvalidParameterError, match="invalid adapter name"):
        A.load_adapter("../etc/passwd")


def test_bad_files_name_the_file(dirs):
    _, user = dirs
    (user / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(A.InvalidAdapterError, match=r"broken\.safetensors: not a readable"):
        A.load_adapter("broken")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(user / "alien.safetensors"))
    with pytest.raises(A.InvalidAdapterError, match=r"alien\.safetensors: not a Lacquer adapter"):
        A.load_adapter("alien")
    a = A.StyleAdapter("short")
    sd = {k: v for k, v in a.state_dict().items() if not k.startswith("stages.eq")}
    meta = {"format": A.FORMAT, "format_version": A.FORMAT_VERSION, "kind": "user"}
    save_file(sd, str(user / "short.safetensors"), metadata=meta)
    with pytest.raises(A.InvalidAdapterError, match="does not fit this chain"):
        A.load_adapter("short")


def test_choose_by_style_and_by_cluster(dirs):
    A.save_adapter(A.StyleAdapter("genre-jazz", "genre", "jazz"))
    assert A.choose_adapter(conditioning=COND) == "genre-jazz"
    assert A.choose_adapter(conditioning=Conditioning(genre="edm")) is None
    assert A.choose_adapter(conditioning=Conditioning(style="lush jazz")) == "genre-jazz"
    # Two clusters: a wide song and a mono one; each routes to its own centroid.
    wide = music_like(2.0, seed=1).unsqueeze(0)
    mono = wide.mean(1, keepdim=True).expand(-1, 2, -1).contiguous()
    emb = A.mix_embedding(torch.cat([wide, mono]))
    mean, std = emb.mean(0), emb.std(0) + 1.0
    for k in range(2):
        a = A.StyleAdapter(f"cluster-{k}", "cluster", str(k))
        a.cluster = {"centroid": (emb[k] - mean) / std, "mean": mean, "std": std}
        A.save_adapter(a)
    assert A.choose_adapter(wide, by="cluster") == "cluster-0"
    assert A.choose_adapter(mono, by="cluster") == "cluster-1"
    assert A.load_adapter("cluster-1").cluster is not None
    with pytest.raises(InvalidParameterError, match="valid: style, cluster"):
        A.choose_adapter(wide, by="mood")


def test_gradients_reach_the_adapter(chain, audio):
    adapted = A.apply_adapter(chain, A.StyleAdapter("x"))
    for p in adapted.parameters():
        p.requires_grad_(False)
    params = [p for n, p in adapted.named_parameters() if ".adapter." in n]
    for p in params:
        p.requires_grad_(True)
    out = adapted(audio[..., :48_000], COND)
    out.audio.square().mean().backward()
    grads = {n: p.grad for n, p in adapted.named_parameters() if ".adapter." in n}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    assert grads["stages.eq.adapter.bias.high_shelf_db"].abs().sum() > 0
    assert grads["stages.compressor.adapter.macro_offset"].abs().sum() > 0
