"""The training loop on a tiny real pair corpus (files written by the synthetic generator and
the pedalboard reference chain, read back by the pair loader): phases, validation guard,
checkpoint/resume equal to an uninterrupted run, exported weights loaded by
``Chain.pretrained``, style adapters, the pool file, configs."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
import torch

from mastering import adapters as A
from mastering.chain import Chain
from mastering.errors import InvalidParameterError
from mastering.training import Trainer, export_weights, get_config
from mastering.training.pool import load_pools, synthetic_manifest
from mastering.training.style import kmeans, train_style_adapters

TINY = replace(
    get_config("test-tiny"),
    pretrain_stages=("eq", "limiter"),
    pretrain_steps=2,
    joint_steps=2,
)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return synthetic_manifest(tmp_path_factory.mktemp("pairs"), n_songs=3, seconds=2.0, seed=0)


@pytest.fixture(scope="module")
def built(manifest, tmp_path_factory):
    """The crop pools built from the manifest's files, also written to ``pool.pt``."""
    out = tmp_path_factory.mktemp("run")
    builder = Trainer(TINY, manifest, out, log=lambda s: None, pool_file=out / "pool.pt")
    builder.load_data()
    return builder, out


@pytest.fixture(scope="module")
def trained(manifest, built):
    _, out = built
    # Every run below reads the same (float16) pool file, so they see identical crops.
    trainer = Trainer(TINY, manifest, out, log=lambda s: None, pool_file=out / "pool.pt")
    return trainer, trainer.run(), out


def test_configs():
    assert [p.name for p in get_config("cpu-small").phases()] == [
        "pretrain:eq",
        "pretrain:compressor",
        "pretrain:exciter",
        "pretrain:imager",
        "pretrain:reverb",
        "pretrain:limiter",
        "joint",
    ]
    assert get_config("gpu").amp and get_config("gpu").device == "cuda"
    with pytest.raises(InvalidParameterError, match="valid: cpu-small, gpu, test-tiny"):
        get_config("huge")
    with pytest.raises(InvalidParameterError, match="cannot pretrain"):
        get_config("test-tiny", pretrain_stages=("master_out",))


def test_run_phases_guard_and_log(trained):
    _, result, out = trained
    assert result.finished
    assert [h["phase"] for h in result.history] == ["pretrain:eq", "pretrain:limiter", "joint"]
    # The validation guard: a phase is kept only if it lowered the validation loss.
    vals = [result.val_before] + [h["val_after"] for h in result.history]
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(vals))
    assert all(h["kept"] == (h["val_after"] < h["val_before"]) for h in result.history)
    lines = (out / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["phase"] for line in lines] == [h["phase"] for h in result.history]


def test_export_and_pretrained(trained, tmp_path):
    result = trained[1]
    path = export_weights(result.chain, tmp_path / "chain.safetensors", {"config": "tiny"})
    assert path.stat().st_size < 2_000_000
    loaded = Chain.pretrained(weights=path)
    for k, v in result.chain.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k].cpu(), v.cpu())
    # Training moved something (the joint phase trains the genre embedding and controllers)
    # unless every phase was undone by the guard.
    fresh = Chain()
    moved = any(
        not torch.equal(fresh.state_dict()[k], v.cpu()) for k, v in loaded.state_dict().items()
    )
    assert moved == any(h["kept"] for h in result.history)


def test_resume_equals_uninterrupted(manifest, trained, tmp_path):
    _, full, out = trained
    pool = out / "pool.pt"
    first = Trainer(TINY, manifest, tmp_path, log=lambda s: None, pool_file=pool)
    part = first.run(stop_after=3)  # stops inside the limiter phase
    assert not part.finished and (tmp_path / "checkpoint.pt").exists()
    second = Trainer(TINY, manifest, tmp_path, log=lambda s: None, pool_file=pool)
    done = second.run(resume=True)
    assert done.finished
    assert [h["phase"] for h in done.history] == [h["phase"] for h in full.history]
    for k, v in full.chain.state_dict().items():
        torch.testing.assert_close(done.chain.state_dict()[k], v, rtol=0, atol=0)


def test_pool_file_round_trip(built):
    trainer, out = built
    pools = load_pools(out / "pool.pt")
    assert set(pools) == {"train", "val"}
    p = pools["train"]
    assert p.raw.shape == trainer.train_pool.raw.shape
    torch.testing.assert_close(p.raw, trainer.train_pool.raw, atol=2e-3, rtol=1e-2)
    assert [c.genre for c in p.conditioning] == [c.genre for c in trainer.train_pool.conditioning]


def test_style_adapters(trained, tmp_path):
    trainer, result, _ = trained
    trainer.chain = result.chain
    report = train_style_adapters(trainer, tmp_path)
    names = {r["name"] for r in report}
    assert {"genre-pop", "genre-jazz"} <= names
    assert any(n.startswith("cluster-") for n in names)
    for r in report:
        assert (tmp_path / f"{r['name']}.safetensors").exists() == r["saved"]
        if r["saved"]:
            a = A.read_adapter_file(tmp_path / f"{r['name']}.safetensors")
            assert a.kind == r["kind"] and float(a.info["loss_after"]) < float(
                a.info["loss_before"]
            )
            if a.kind == "cluster":
                assert a.cluster is not None
    # Training leaves the chain itself without an adapter.
    assert not any(".adapter." in k for k in trainer.chain.state_dict())


def test_kmeans_separates_groups():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 3, generator=g) * 0.1
    b = torch.randn(10, 3, generator=g) * 0.1 + 5.0
    cent, labels = kmeans(torch.cat([a, b]), 2, seed=1)
    assert cent.shape == (2, 3)
    assert len(set(labels[:10].tolist())) == 1 and len(set(labels[10:].tolist())) == 1
    assert labels[0] != labels[10]
