"""Shards streamed from an S3-compatible server (moto's, started here), a loopback HTTP server, ``file://``,
``pipe:`` and a local folder: the same samples at every step, disjoint readers, exact resume, failures skipped."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mert.cli import main as cli
from mert.data.streaming import StreamingShards, open_shards, shard_dataset
from tests.helpers import logged_column, serving

SHARD_SIZE = 3  # 16 one-second segments -> 6 shards (3, 3, 3, 3, 3, 1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A manifest of 8 two-second clips and their shards (1 s segments, random-projection codes + CQT)."""
    from mert.data.manifest import scan_audio, write_manifest
    from mert.data.shards import write_shards
    from mert.data.synthetic import write_synthetic_corpus
    from mert.targets import RandomProjectionTargets

    root = tmp_path_factory.mktemp("stream")
    clips = write_synthetic_corpus(root / "clips", 8, seconds=2.0, seed=3)
    write_manifest(root / "m.tsv", scan_audio(clips, progress=False).entries)
    teachers = {"codes": RandomProjectionTargets(seed=0)}
    write_shards(
        root / "m.tsv", root / "shards", segment_seconds=1.0, min_seconds=1.0, shard_size=SHARD_SIZE,
        teachers=teachers, progress=False,
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def s3(corpus):
    """moto's S3 server on a loopback port; yields fsspec options for it (credentials from the environment)."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"endpoint_url": f"http://{host}:{port}"}
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("corpus-bucket")
    try:
        yield options
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _http_handler(folder: Path, fail: dict[str, int] | None = None):
    """Serves ``folder``; ``fail[name] = n`` answers the first n requests for ``name`` with 500 (-1: always 404)."""
    fail = dict(fail or {})

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            name = self.path.rsplit("/", 1)[-1]
            if fail.get(name, 0) == -1:
                self.send_error(404)
                return
            if fail.get(name, 0) > 0:
                fail[name] -= 1
                self.send_error(500)
                return
            super().do_GET()

    return functools.partial(Handler, directory=str(folder))


def _batches(dataset, *, rank=0, world=1, micro=2, workers=0, start=0, n=6, seed=0):
    """The first ``n`` micro-batches of one rank: ``[(keys, sha of audio + targets, n_skipped)]``."""
    dataset.plan(rank=rank, world_size=world, micro_batch_size=micro, start_micro_batch=start, seed=seed)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    out = []
    for i, batch in enumerate(loader):
        if i == n:
            break
        digest = hashlib.sha256(batch["wav"].numpy().tobytes())
        for role in sorted(batch.get("targets", {})):
            digest.update(batch["targets"][role].numpy().tobytes())
        out.append((tuple(batch["keys"]), digest.hexdigest()[:16], int(batch["n_skipped"])))
    return out


def test_the_same_samples_from_s3_http_file_pipe_and_a_local_folder(corpus, s3):
    """Shards written straight to the bucket are the local ones byte for byte; every transport gives the same
    micro-batches (keys, audio, targets) to every rank and worker."""
    from mert.data.shards import write_shards
    from mert.targets import RandomProjectionTargets

    local = corpus / "shards"
    write_shards(
        corpus / "m.tsv", "s3://corpus-bucket/train", segment_seconds=1.0, min_seconds=1.0, shard_size=SHARD_SIZE,
        teachers={"codes": RandomProjectionTargets(seed=0)}, progress=False, storage_options=s3,
    )  # fmt: skip
    import s3fs

    fs = s3fs.S3FileSystem(**s3)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("corpus-bucket/train"))
    assert names == sorted(p.name for p in local.iterdir())
    for name in names:
        assert fs.cat_file(f"corpus-bucket/train/{name}") == (local / name).read_bytes(), name

    pattern = f"{local}/shard-{{000000..000005}}.tar"
    with serving(_http_handler(local)) as base:
        sources = {
            "local": (str(local), {}),
            "file": (f"file://{local}", {}),
            "s3": ("s3://corpus-bucket/train", s3),
            "http": (base, {}),
            "pipe": (f"pipe:cat {pattern}", {}),
        }
        seen = {}
        for name, (source, options) in sources.items():
            ds = shard_dataset(source, streaming=True, storage_options=options, sample_rate=24000)
            assert isinstance(ds, StreamingShards) and len(ds.urls) == 6
            seen[name] = [_batches(ds, rank=r, world=2, workers=2, n=5) for r in range(2)]
    for name in sources:
        assert seen[name] == seen["local"], name
    keys = [k for rank in seen["local"] for batch in rank for k in batch[0]]
    assert len(keys) == 20 and all(len(b[0]) == 2 and b[2] == 0 for rank in seen["local"] for b in rank)
    # A plain local folder without streaming keeps the random-access dataset.
    assert not isinstance(shard_dataset(str(local)), StreamingShards)


def test_readers_get_disjoint_shards_and_a_seeded_order(corpus):
    ds = StreamingShards(corpus / "shards", shuffle_shards=1)
    for epoch_groups in range(2):
        per_slot = []
        for slot in range(4):
            groups = [g for g in _take(ds.slot_groups(slot, 4, seed=7), 6) if g[0] == epoch_groups]
            per_slot.append({s for _, _, shards in groups for s in shards})
        assert set().union(*per_slot) == set(range(6))
        assert sum(len(s) for s in per_slot) == 6  # disjoint
    # Each reader's batches come from its own shards only.
    shard_of = {}
    for i, url in enumerate(ds.urls):
        for key, _ in _read_tar(url):
            shard_of[key] = i
    first = {r: {shard_of[k] for b in _batches(ds, rank=r, world=2, micro=1, n=3) for k in b[0]} for r in range(2)}
    assert not first[0] & first[1]
    # Seeded: another seed, another order; the same seed, the same order.
    assert _batches(ds, seed=1) == _batches(ds, seed=1) != _batches(ds, seed=2)


def _take(it, n):
    return [x for _, x in zip(range(n), it)]


def _read_tar(path):
    from mert.data.streaming import _tar_samples

    return _tar_samples(Path(path).read_bytes(), str(path))


@pytest.mark.parametrize("indexed", [True, False])
def test_a_resume_continues_the_stream_exactly(corpus, indexed):
    """Micro-batch k onward after a restart equals the uninterrupted stream, with loader workers rotated; shards
    before the restart point are passed over by their index counts (or read through: a command has no index)."""
    source = corpus / "shards" if indexed else f"pipe:cat {corpus / 'shards'}/shard-{{000000..000005}}.tar"
    ds = StreamingShards(source)
    assert (ds.num_samples == 16) == indexed
    full = _batches(ds, micro=2, workers=2, n=14)  # more than an epoch: 16 samples = 8 micro-batches
    for k in (1, 3, 8, 9):
        assert _batches(ds, micro=2, workers=2, start=k, n=14 - k) == full[k:], k
    # Another layout is cut anew: it keeps the count of samples but not their order.
    assert _batches(ds, micro=2, workers=1, start=3, n=3) != full[3:6]


def test_a_failing_shard_is_retried_then_skipped_and_counted(corpus, caplog):
    local = corpus / "shards"
    clean = _batches(StreamingShards(local), micro=2, n=8)
    with serving(_http_handler(local, {"shard-000001.tar": 2})) as base:
        flaky = StreamingShards(base, retries=2, retry_wait=0.0)
        assert _batches(flaky, micro=2, n=8) == clean and flaky.failed_shards == 0
    with serving(_http_handler(local, {"shard-000002.tar": -1})) as base:
        broken = StreamingShards(base, retries=1, retry_wait=0.0)
        got = _batches(broken, micro=2, n=10)
    assert broken.failed_shards >= 1 and "shard-000002.tar" in caplog.text
    lost = {k for k, _ in _read_tar(local / "shard-000002.tar")}
    keys = [k for b in got for k in b[0]]
    assert not lost & set(keys) and sum(b[2] for b in got) >= SHARD_SIZE  # skipped and counted, no crash


def test_a_validation_set_is_copied_once_to_a_local_cache(corpus, tmp_path):
    """`data.valid=URL`: the shards are fetched once into a folder that the random-access reader uses."""
    from mert.data.shards import ShardDataset
    from mert.data.streaming import download_shards

    requests = []

    class Counting(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    local = ShardDataset(corpus / "shards")
    with serving(functools.partial(Counting, directory=str(corpus / "shards"))) as base:
        folder = download_shards(base, tmp_path / "cache")
        first = len(requests)
        assert download_shards(base, tmp_path / "cache") == folder
    assert first == 7 and len(requests) == first + 1  # index + 6 shards, then the index only
    copied = ShardDataset(folder)
    assert len(copied) == len(local) == 16
    for i in range(len(local)):
        assert copied.key(i) == local.key(i) and torch.equal(copied[i]["wav"], local[i]["wav"])
        assert torch.equal(copied[i]["targets"]["codes"], local[i]["targets"]["codes"])


def test_clear_errors_for_missing_indexes_and_too_many_readers(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="no index.json at .*mert data shard --out"):
        open_shards(f"file://{tmp_path}")
    ds = StreamingShards(corpus / "shards")
    with pytest.raises(ValueError, match="6 shard\\(s\\) cannot feed 8 readers"):
        ds.check_layout(num_workers=4, world_size=2)
    with pytest.raises(ValueError, match="16000 Hz"):
        StreamingShards(corpus / "shards", sample_rate=16000)
    with pytest.raises(ValueError, match="streaming=false reads local shards only"):
        shard_dataset("s3://b/x", streaming=False)


def test_storage_options_and_retries_keep_the_run_folder_while_another_corpus_gets_its_own():
    from mert.lightning.runfolder import is_scientific
    from mert.lightning.train import derive_run_dir

    same = ["+data.storage_options.endpoint_url=http://minio:9000", "data.retries=5"]
    assert derive_run_dir("runs", "x", same) == Path("runs/x")
    assert derive_run_dir("runs", "x", ["data.shards=s3://b/other"]) == Path("runs/x/data.shards=s3:__b_other")
    assert not is_scientific("data.storage_options.endpoint_url") and is_scientific("data.shuffle_shards")


def test_mert_data_shard_writes_to_a_bucket(corpus, s3, capsys):
    url = "s3://corpus-bucket/cli"
    args = ["data", "shard", str(corpus / "m.tsv"), "--out", url, "--segment-seconds", "1", "--min-seconds", "1"]
    args += ["--shard-size", "4", "--storage-option", f"endpoint_url={s3['endpoint_url']}", "--quiet"]
    assert cli(args) == 0
    urls, sizes, info = open_shards(url, s3)
    assert sizes == [4, 4, 4, 4] and info["num_samples"] == 16 and url in capsys.readouterr().out
    assert cli(args) == 1 and "already holds shards" in capsys.readouterr().err
    assert cli([*args, "--overwrite"]) == 0


@pytest.mark.slow
def test_two_ranks_train_the_same_steps_from_s3_http_and_a_local_folder_and_resume(corpus, s3, tmp_path):
    """ddp_cpu (2 ranks x 1 worker) on the same shards from the bucket, over HTTP and from the local folder
    (streamed): identical per-step losses, so identical samples; stopped after 2 steps and rerun, it continues
    with the losses of the uninterrupted run."""
    from mert.data.shards import write_shards
    from mert.targets import RandomProjectionTargets

    write_shards(
        corpus / "m.tsv", "s3://corpus-bucket/ddp", segment_seconds=1.0, min_seconds=1.0, shard_size=SHARD_SIZE,
        teachers={"codes": RandomProjectionTargets(seed=0)}, progress=False, storage_options=s3, overwrite=True,
    )  # fmt: skip
    common = [
        "pretrain", "experiment=tiny_cpu", "logger=csv", "trainer=ddp_cpu", "trainer.log_every_n_steps=1",
        "data=shards", "data.global_batch_size=4", "data.micro_batch_size=2", "data.num_workers=1",
        "callbacks=default",
    ]  # fmt: skip
    with serving(_http_handler(corpus / "shards")) as base:
        sources = {
            "local": [f"data.shards={corpus / 'shards'}", "data.streaming=true"],
            "s3": ["data.shards=s3://corpus-bucket/ddp", f"+data.storage_options.endpoint_url={s3['endpoint_url']}"],
            "http": [f"data.shards={base}"],
        }
        losses = {}
        for name, extra in sources.items():
            assert cli([*common, *extra, "trainer.max_steps=4", f"run_dir={tmp_path / name}"]) == 0, name
            losses[name] = logged_column(tmp_path / name)
        assert sorted(losses["local"]) == [0, 1, 2, 3]
        assert losses["s3"] == losses["local"] == losses["http"]
        run = tmp_path / "resumed"
        assert cli([*common, *sources["s3"], "trainer.max_steps=2", f"run_dir={run}"]) == 0
        assert cli([*common, *sources["s3"], "trainer.max_steps=4", f"run_dir={run}"]) == 0
    resumed = logged_column(run)
    for step in (2, 3):
        assert resumed[step] == pytest.approx(losses["local"][step], abs=1e-6), step
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["samples_seen"] == 16
    assert np.isfinite(list(resumed.values())).all() and torch.isfinite(torch.tensor(list(resumed.values()))).all()


@pytest.mark.slow
def test_a_run_streaming_from_s3_killed_by_sigterm_resumes_where_the_docs_say(corpus, s3, tmp_path, capsys):
    """One rank, two loader workers, shards from the S3 server: SIGTERM at step 2 saves a checkpoint and exits 143;
    the same command continues with the losses of an uninterrupted run (same layout: the exact stream)."""
    import signal

    common = [
        "pretrain", "experiment=tiny_cpu", "logger=csv", "trainer.log_every_n_steps=1", "callbacks=default",
        "data=shards", "data.shards=s3://corpus-bucket/kill",
        f"+data.storage_options.endpoint_url={s3['endpoint_url']}", "data.global_batch_size=4",
        "data.micro_batch_size=2", "data.num_workers=2", "trainer.max_steps=4",
    ]  # fmt: skip
    from mert.data.shards import write_shards
    from mert.targets import RandomProjectionTargets

    write_shards(
        corpus / "m.tsv", "s3://corpus-bucket/kill", segment_seconds=1.0, min_seconds=1.0, shard_size=SHARD_SIZE,
        teachers={"codes": RandomProjectionTargets(seed=0)}, progress=False, storage_options=s3, overwrite=True,
    )  # fmt: skip
    assert cli([*common, f"run_dir={tmp_path / 'full'}"]) == 0
    run = tmp_path / "killed"
    kill = ["+callbacks.kill._target_=tests.callbacks.SignalAt", "+callbacks.kill.step=2", "+callbacks.kill.signum=15"]
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert cli([*common, *kill, f"run_dir={run}"]) == 143
    finally:
        signal.signal(signal.SIGTERM, before)
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert cli([*common, f"run_dir={run}"]) == 0
    full, resumed = logged_column(tmp_path / "full"), logged_column(run)
    assert sorted(resumed) == [0, 1, 2, 3]
    for step in (2, 3):
        assert resumed[step] == pytest.approx(full[step], abs=1e-6), step
