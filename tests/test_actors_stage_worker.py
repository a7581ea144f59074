"""Stage workers as real Ray actors on the shared test cluster (logical GPUs)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from actors.placement import plan_farm
from actors.stage_actor import SongSpec, StageWorker, concat_states
from mastering.chain import DEFAULT_ORDER, Chain
from mastering.conditioning import Conditioning
from mastering.io import read_audio, write_audio
from mastering.loudness import integrated_loudness
from mastering.render import MasterOptions
from mastering.testsignals import music_like


def test_concat_states_pads_to_the_longest_and_keeps_conditioning():
    chain = Chain.pretrained()
    a = chain.begin(music_like(1.5, seed=1).unsqueeze(0), Conditioning(genre="rock"))
    b = chain.begin(music_like(2.0, seed=2).unsqueeze(0), Conditioning(genre="jazz"))
    s = concat_states([a, b])
    assert s.audio.shape == (2, 2, b.audio.shape[-1])
    assert torch.equal(s.audio[0, :, : a.audio.shape[-1]], a.audio[0])
    assert torch.all(s.audio[0, :, a.audio.shape[-1] :] == 0)
    assert s.length == b.length
    assert s.cond.genre.tolist() == [a.cond.genre.item(), b.cond.genre.item()]


def test_songs_of_one_length_begin_together_and_a_bad_one_fails_alone(tmp_path):
    """Songs of equal length begin as one batch; when that batch fails (here a song with NaN
    samples that got past decoding), its songs begin one by one and only the culprit fails.
    Songs of one length give the same masters together or alone (a shorter song batched with
    longer ones is padded with silence, which its controllers hear: not compared here)."""
    worker = StageWorker(tuple(DEFAULT_ORDER), MasterOptions(), first=True, last=True)
    clips = [music_like(1.5, seed=s) for s in (1, 2, 3, 4)]
    clips[3] = clips[3][:, :-4800]  # another length: its own group
    clips[1][0, 100:110] = float("nan")
    info = type("Info", (), {"sample_rate": 48_000})()
    specs = [SongSpec(f"s{i}", f"in{i}.wav", str(tmp_path / f"s{i}.wav")) for i in range(4)]
    batch = worker._begin(specs, [((c, info), 0.0) for c in clips])
    assert [s.song_id for s in batch.songs] == ["s0", "s2", "s3"]
    assert [r.song_id for r in batch.failed] == ["s1"] and "NaN" in batch.failed[0].error
    assert batch.lengths == [clips[0].shape[-1], clips[2].shape[-1], clips[3].shape[-1]]
    order = worker.chain.config.order
    together = worker.chain.finish(worker.chain.run_stages(batch.state, order)).audio
    for row, i in enumerate((0, 2)):
        alone = worker._begin(specs[i : i + 1], [((clips[i], info), 0.0)])
        expected = worker.chain.finish(worker.chain.run_stages(alone.state, order)).audio[0]
        got = together[row, :, : batch.lengths[row]]
        # Batched kernels round differently (4e-4 measured): within 1e-3, i.e. -60 dBFS.
        assert torch.allclose(got, expected, atol=1e-3), (i, (got - expected).abs().max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_masters_quantized_on_the_gpu_are_the_bytes_of_the_float_path(tmp_path):
    """On a GPU worker 24-bit masters are quantized on the device; the files are the bytes
    the host-side float path writes."""
    folder = tmp_path / "in"
    folder.mkdir()
    specs = []
    for i in range(2):
        write_audio(folder / f"s{i}.wav", music_like(2.0, seed=i), format="wav24")
        specs.append(SongSpec(f"s{i}", str(folder / f"s{i}.wav"), ""))
    files = {}
    for path in ("gpu", "host"):
        (tmp_path / path).mkdir()
        worker = StageWorker(tuple(DEFAULT_ORDER), MasterOptions(), first=True, last=True)
        assert worker.device.type == "cuda"
        if path == "host":
            worker._quantize_here = lambda *_: False
        todo = [SongSpec(s.song_id, s.input_path, str(tmp_path / path / s.song_id)) for s in specs]
        results = worker.process(todo)
        assert all(r.ok for r in results), [r.error for r in results]
        files[path] = [(tmp_path / path / s.song_id).read_bytes() for s in specs]
    assert files["gpu"] == files["host"]


@pytest.mark.ray
def test_pipeline_workers_get_their_own_gpus_on_one_node_and_master_songs(ray_cluster, tmp_path):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    (pipe,) = plan_farm(DEFAULT_ORDER, gpus=3).pipelines
    pg = placement_group(pipe.bundles, strategy=pipe.strategy)
    ray.get(pg.ready(), timeout=60)
    options = MasterOptions(format="wav32f")
    last = len(pipe.groups) - 1
    workers = [
        ray.remote(StageWorker)
        .options(
            num_cpus=g.num_cpus,
            num_gpus=g.num_gpus,
            max_restarts=1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=g.bundle_index
            ),
        )
        .remote(g.stages, options, first=i == 0, last=i == last)
        for i, g in enumerate(pipe.groups)
    ]
    try:
        infos = ray.get([w.info.remote() for w in workers])
        gpu_ids = [tuple(i["gpu_ids"]) for i in infos]
        assert all(len(ids) == 1 for ids in gpu_ids)
        assert len(set(gpu_ids)) == len(workers)  # each stage group on its own GPU
        assert len({i["node_id"] for i in infos}) == 1  # the pipeline stays on one node
        assert [tuple(i["stages"]) for i in infos] == [g.stages for g in pipe.groups]

        # Two songs of different lengths and a NaN one, in one batch.
        paths = []
        for k, seconds in enumerate((1.5, 2.5)):
            p = tmp_path / f"s{k}.wav"
            write_audio(p, music_like(seconds, seed=k), format="wav16")
            paths.append(p)
        bad = tmp_path / "nan.wav"
        data = music_like(1.0, seed=9).T.numpy().copy()
        data[100, 0] = np.nan
        sf.write(bad, data, 48_000, subtype="FLOAT")
        specs = [
            SongSpec(p.stem, str(p), str(tmp_path / f"out-{p.stem}.wav"))
            for p in [paths[0], bad, paths[1]]
        ]
        ref = specs
        for w in workers:
            ref = w.process.remote(ref)
        results = {r.song_id: r for r in ray.get(ref, timeout=120)}
        assert not results["nan"].ok
        assert "nan.wav" in results["nan"].error and "NaN" in results["nan"].error
        for k, p in enumerate(paths):
            r = results[p.stem]
            assert r.ok, r.error
            out, _ = read_audio(r.output_path)
            src, _ = read_audio(p)
            assert out.shape == src.shape  # each song cut back to its own length
            assert [w["stages"] for w in r.workers] == [list(g.stages) for g in pipe.groups]
            lufs = float(integrated_loudness(out.unsqueeze(0))[0])
            assert lufs == pytest.approx(-14.0, abs=0.6), (k, lufs)
    finally:
        for w in workers:
            ray.kill(w)
        remove_placement_group(pg)
