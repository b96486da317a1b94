"""Shared fixtures: a small synthetic corpus and a tiny-run config, built at test time."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xformer.commands.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLES = REPO / "xformer" / "samples"  # the small samples shipped in the package (data_prep/make_samples.py)


def data_roots() -> list[Path]:
    """Where tests look for the shared (real) data: ``$XFORMER_DATA``, then ``../shared/data``."""
    env = os.environ.get("XFORMER_DATA")
    return ([Path(env).expanduser()] if env else []) + [SHARED_DATA]


# Shared files a sample shipped in the package stands in for (same columns, fewer rows) when no data root has them.
SAMPLE_STAND_INS = {
    ("cifar10", "train.parquet"): SAMPLES / "cifar10-sample" / "train.parquet",
    ("wiki",): SAMPLES / "wikipedia-sample",
    ("wiki", "train-00000-of-00008.parquet"): SAMPLES / "wikipedia-sample" / "train.parquet",
}


def shared_data(*parts: str) -> Path:
    """The shared data file or folder ``parts`` (e.g. ``"cifar10", "train.parquet"``) under the first of
    :func:`data_roots` that holds it, else the packaged sample that stands in for it (so a fresh clone runs
    these tests too); the test is skipped when neither exists."""
    for root in data_roots():
        if root.joinpath(*parts).exists():
            return root.joinpath(*parts)
    if parts in SAMPLE_STAND_INS and SAMPLE_STAND_INS[parts].exists():
        return SAMPLE_STAND_INS[parts]
    pytest.skip(f"real data not found: {'/'.join(parts)} under {' or '.join(map(str, data_roots()))}")


def make_documents(n_docs: int, seed: int = 0) -> list[str]:
    """Documents of Zipf-distributed words with a little structure, so small models learn quickly."""
    rng = random.Random(seed)
    words = [f"w{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}" for i in range(300)]
    weights = [1 / (i + 1) for i in range(len(words))]
    docs = []
    for d in range(n_docs):
        topic = rng.sample(words, 20)  # each document repeats its own topic words
        paragraphs = []
        for _ in range(rng.randint(2, 4)):
            sentences = []
            for _ in range(rng.randint(3, 8)):
                n = rng.randint(4, 14)
                body = [rng.choice(topic) if rng.random() < 0.4 else rng.choices(words, weights)[0] for _ in range(n)]
                sentences.append(" ".join(body).capitalize() + ".")
            paragraphs.append(" ".join(sentences))
        docs.append("\n".join(paragraphs))
    return docs


@pytest.fixture
def offline(monkeypatch):
    """Nothing may reach the network: the hub is off for the environment and huggingface_hub."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.parquet"
    pq.write_table(pa.table({"text": make_documents(300)}), path)
    return path


@pytest.fixture
def tiny_config(corpus_path, tmp_path):
    """A 2-layer, 32-dim BERT on the synthetic corpus; a few seconds per 20 steps on a CPU."""

    def build(*overrides: str):
        base = [
            f"data.source={corpus_path}", f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'run'}",
            "data.val_documents=20", "data.max_seq_len=64", "data.tokenizer.vocab_size=400",
            "model.dim=32", "model.depth=2", "model.num_heads=2", "model.max_position=64",
            "train.batch_size=8", "train.max_steps=20", "train.lr=1e-3", "train.warmup_steps=2",
            "train.log_every=1", "train.eval_every=1000", "train.eval_batches=2", "train.save_every=1000",
            "train.progress=false", "train.device=cpu",
        ]
        return load_recipe(None, base + list(overrides))

    return build


@pytest.fixture
def one_process_group():
    """A gloo process group of one process (rank 0), torn down after the test."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
