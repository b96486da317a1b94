"""The samples shipped in the package: found by name offline and only by their own names, shipped by the
package build, rebuilt identically by data_prep/make_samples.py, and enough for each quick-start recipe."""

from __future__ import annotations

import importlib.util
import json
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xformer.commands.cli import main
from xformer.data import catalog
from xformer.data.sources import resolve
from xformer.errors import XformerError

from conftest import REPO, SAMPLES, data_roots

SAMPLE_SPLITS = {"wikipedia-sample": ("train",), "cifar10-sample": ("train",),
                 "captions-sample": ("train", "validation")}
QUICKSTART = REPO / "recipes" / "quickstart"


def make_samples():
    """data_prep/make_samples.py as a module (data_prep is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("make_samples", REPO / "data_prep" / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", SAMPLE_SPLITS)
def test_each_sample_resolves_by_name_offline_with_its_columns(name, offline, tmp_path, monkeypatch):
    monkeypatch.setenv("XFORMER_DATA", str(tmp_path))  # an empty data folder: the package copy is still found
    dataset = catalog.CATALOG[name]
    for split in SAMPLE_SPLITS[name]:
        src = resolve(f"{name}:{split}")
        assert src.kind == "files" and [p.parent for p in src.files] == [SAMPLES / name]
        assert set(dataset.columns) <= set(pq.read_schema(src.files[0]).names)


def test_a_real_name_never_falls_back_to_a_sample(offline, tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "REPO_DATA", tmp_path / "none")
    monkeypatch.setattr(catalog, "BESIDE", tmp_path / "none")
    monkeypatch.delenv("XFORMER_DATA", raising=False)
    for name in ("cifar10", "wikipedia"):
        with pytest.raises(XformerError, match="HF hub is off") as err:
            resolve(name)
        assert "samples" not in str(err.value)


def test_a_missing_sample_split_is_a_one_line_error(offline):
    with pytest.raises(XformerError, match="no test split.*no hub copy") as err:
        resolve("cifar10-sample:test")
    assert "\n" not in str(err.value)


def test_the_samples_are_small_and_every_file_is_package_data():
    files = sorted(p.relative_to(SAMPLES.parent) for p in SAMPLES.rglob("*") if p.is_file()
                   and "__pycache__" not in p.parts)
    assert sum((SAMPLES.parent / f).stat().st_size for f in files) < 1_500_000
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["xformer"]
    assert all(any(f.match(g) for g in globs) for f in files), files
    assert {f.parent.name for f in files if f.suffix == ".parquet"} == set(SAMPLE_SPLITS)


def sample_data_root(tmp_path: Path) -> Path:
    """A data folder in the shared layout made from the samples (1,000 CIFAR images twice over, enough
    for every sample the script cuts), for when the full sets are not on this machine."""
    (tmp_path / "wiki").mkdir(parents=True)
    (tmp_path / "cifar10").mkdir()
    wiki = pq.read_table(SAMPLES / "wikipedia-sample" / "train.parquet")
    pq.write_table(wiki, tmp_path / "wiki" / "train-00000-of-00008.parquet")
    cifar = pq.read_table(SAMPLES / "cifar10-sample" / "train.parquet")
    pq.write_table(pa.concat_tables([cifar, cifar]), tmp_path / "cifar10" / "train.parquet")
    return tmp_path


def test_make_samples_is_deterministic_and_rebuilds_the_shipped_files(tmp_path):
    ms = make_samples()
    needed = (("wiki", "train-00000-of-00008.parquet"), ("cifar10", "train.parquet"))
    real = next((r for r in data_roots() if all(r.joinpath(*p).exists() for p in needed)), None)
    data = real or sample_data_root(tmp_path / "data")
    first, second = ms.build(data, tmp_path / "a"), ms.build(data, tmp_path / "b")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    for path in first:
        table = pq.read_table(path)
        if real is not None:  # from the full sets: the very files shipped
            assert table.equals(pq.read_table(SAMPLES / path.relative_to(tmp_path / "a")))
    captions = pq.read_table(tmp_path / "a" / "captions-sample" / "train.parquet").column("captions").to_pylist()
    assert all(len(set(c)) == ms.CAPTIONS_PER_IMAGE for c in captions)


@pytest.mark.parametrize("recipe, command, sets", [
    ("bert.yaml", "pretrain", ["train.max_steps=3", "train.eval_every=3", "train.save_every=3",
                               "train.warmup_steps=1", "data.val_documents=5", "train.eval_batches=1"]),
    ("vit.yaml", "train", ["train.epochs=1", "train.max_steps=3", "train.warmup_steps=1"]),
    ("clip.yaml", "train", ["train.epochs=1", "train.max_steps=3", "train.warmup_steps=1", "eval.max_images=100"]),
])
def test_each_quickstart_recipe_trains_from_the_samples_and_evaluates(recipe, command, sets, offline, tmp_path):
    argv = [command, str(QUICKSTART / recipe), "--out", str(tmp_path / "run"), "--set", "train.progress=false",
            "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    main(argv + [a for s in sets for a in ("--set", s)])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("split") == "val"] == [3], records  # the held-out evaluation
