"""Datasets by name: lookup in $XFORMER_DATA and beside the project, the offline message, paths before
names, data_prep/fetch.py's layout, and streaming a hub corpus. No network: the hub is monkeypatched."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import itertools
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from xformer.commands.cli import main as xformer_main
from xformer.data.configs import ImageDataConfig
from xformer.data import catalog
from xformer.data.text.corpus import read_documents
from xformer.data.image.images import load_image_data
from xformer.data.readers import load_hub
from xformer.data.sources import resolve, source_fingerprint
from xformer.errors import XformerError

REPO = Path(__file__).resolve().parents[1]


def _load_fetch():
    spec = importlib.util.spec_from_file_location("fetch", REPO / "data_prep" / "fetch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetch = _load_fetch()


def write(path: Path, **columns) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No data folder anywhere: $XFORMER_DATA unset, the repository's and the current directory's
    ../shared/data empty, the hub off. Returns the tmp root; cwd is tmp_path/project."""
    monkeypatch.delenv("XFORMER_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(catalog, "REPO_DATA", tmp_path / "repo_shared" / "data")
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    return tmp_path


@pytest.fixture
def online(nowhere, monkeypatch):
    """As ``nowhere``, but the hub is on (and monkeypatched by the test)."""
    for var in catalog.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    return nowhere


# ----------------------------------------------------------------------------- lookup


def test_a_name_is_found_in_xformer_data_first(nowhere, monkeypatch):
    data = nowhere / "data"
    train = write(data / "sst2" / "train.parquet", sentence=["a"], label=[0])
    val = write(data / "sst2" / "validation.parquet", sentence=["b"], label=[1])
    write(nowhere / "shared" / "data" / "sst2" / "train.parquet", sentence=["beside"], label=[0])
    wiki = [write(data / "wiki" / f"train-0000{i}-of-00002.parquet", text=["t"]) for i in range(2)]
    monkeypatch.setenv("XFORMER_DATA", str(data))
    src = resolve("sst2")
    assert src.kind == "files" and src.files == [train.resolve()]  # before the folder beside the project
    assert resolve("sst2:validation").files == resolve("sst2", split="dev").files == [val.resolve()]
    assert resolve("sst2:validation", split="train").files == [val.resolve()]  # the value's split wins
    assert resolve("wikipedia").files == [p.resolve() for p in wiki]  # the historical folder name
    assert source_fingerprint("sst2") != source_fingerprint("sst2", split="validation")


def test_a_name_is_found_beside_the_project(nowhere, monkeypatch):
    beside = write(nowhere / "shared" / "data" / "flickr8k" / "dev.parquet", image=[b"x"], captions=["c"])
    assert resolve("flickr8k", split="validation").files == [beside.resolve()]  # ../shared/data from cwd
    repo = write(catalog.REPO_DATA / "sst2" / "sentences" / "train.parquet", sentence=["a"], label=[0])
    assert resolve("sst2-sentences").files == [repo.resolve()]  # beside the repository
    assert resolve(["sst2-sentences"]).files == [repo.resolve()]


def test_a_missing_name_offline_is_one_line_naming_the_folders_and_the_fix(nowhere, capsys):
    with pytest.raises(XformerError) as err:
        resolve("cifar10", "eval.source", split="test")
    msg = str(err.value)
    assert msg.startswith("eval.source 'cifar10': no test split") and "\n" not in msg
    assert str(catalog.REPO_DATA / "cifar10") in msg and str(nowhere / "shared" / "data" / "cifar10") in msg
    assert "$XFORMER_DATA is not set" in msg and "HF hub is off" in msg
    assert "python data_prep/fetch.py cifar10 --out DIR, then export XFORMER_DATA=DIR" in msg

    recipe = REPO / "recipes" / "bert_tiny.yaml"
    assert xformer_main(["pretrain", str(recipe), "--out", str(nowhere / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data.source 'wikipedia': no train split")
    assert "data_prep/fetch.py wikipedia" in lines[0] and str(catalog.REPO_DATA / "wiki") in lines[0]


def test_an_explicit_path_or_glob_is_never_a_name(nowhere):
    own = write(nowhere / "project" / "sst2" / "mine.parquet", sentence=["a"], label=[0])
    write(catalog.REPO_DATA / "sst2" / "train.parquet", sentence=["b"], label=[0])
    assert resolve("sst2").files == [Path("sst2/mine.parquet")] and own.is_file()
    with pytest.raises(XformerError, match="the pattern matches no"):
        resolve("cifar10*")
    hub = resolve("owner/cifar10")  # hub names outside the catalogue are still hub names
    assert (hub.kind, hub.name) == ("hub", "owner/cifar10")


def test_hub_failure_for_a_name_says_how_to_fetch(online, monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'stanfordnlp/sst2' on the Hub\ndetail")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    src = resolve("sst2", "data.val_source", split="validation")
    assert (src.kind, src.name, src.split) == ("hub", "sst2", "validation")
    with pytest.raises(XformerError) as err:
        load_hub(src.key, src.name, src.split)
    msg = str(err.value)
    assert msg.startswith("data.val_source 'sst2': no validation split") and "\n" not in msg
    assert "the HF hub failed (Couldn't reach 'stanfordnlp/sst2' on the Hub)" in msg and "fetch.py sst2" in msg
    with pytest.raises(XformerError, match="uoft-cs/cifar10 on the HF hub has no such split"):
        resolve("cifar10:validation")


# ----------------------------------------------------------------------------- fetch.py


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def fake_hub(monkeypatch, tables: dict) -> list:
    """``datasets.load_dataset`` answering from ``tables``: (hub id, split) -> Dataset; returns the calls."""
    calls = []

    def load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        return tables[path, split]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_fetch_writes_the_layout_the_catalogue_reads(online, monkeypatch, capsys):
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    cifar = {("uoft-cs/cifar10", s): datasets.Dataset.from_dict(
        {"img": [_png((255, 0, 0)), _png((0, 0, 255))] * 3, "label": [0, 1] * 3}, features=features)
        for s in ("train", "test")}
    sentences = {("SetFit/sst2", s): datasets.Dataset.from_dict(
        {"text": ["good", "bad"], "label": [1, 0], "label_text": ["positive", "negative"]})
        for s in ("validation", "train")}
    calls = fake_hub(monkeypatch, cifar | sentences)
    out = online / "fetched"

    assert fetch.main(["cifar10", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "cifar10").iterdir()) == ["test.parquet", "train.parquet"]
    assert fetch.main(["sst2-sentences", "--out", str(out), "--split", "dev"]) == 0
    assert fetch.main(["sst2-sentences", "--out", str(out), "--split", "train"]) == 0  # added beside
    folder = out / "sst2-sentences"
    assert sorted(p.name for p in folder.iterdir()) == ["train.parquet", "validation.parquet"]
    assert pq.read_table(folder / "validation.parquet").column_names == ["sentence", "label"]
    assert [c[2] for c in calls if c[0] == "SetFit/sst2"] == ["validation", "train"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder left

    monkeypatch.setenv("XFORMER_DATA", str(out))
    assert resolve("sst2-sentences:dev").files == [(folder / "validation.parquet").resolve()]
    cfg = ImageDataConfig(source="cifar10", test_source="cifar10", val_size=2, cache_dir=str(online / "cache"))
    data = load_image_data(cfg)
    assert data.class_names == ["cat", "dog"] and len(data.train) == 4 and len(data.test) == 6
    assert data.train.images.shape[1:] == (3, 4, 4)
    assert "use it with: export XFORMER_DATA=" in capsys.readouterr().out


def test_fetch_combines_captions_and_shards_large_sets(online, monkeypatch):
    captions = {f"caption_{i}": [f"a {i}", f"b {i}"] for i in range(5)}
    flickr = datasets.Dataset.from_dict({"image": [_png((0, 0, 0))] * 2, **captions},
                                        features=datasets.Features({"image": datasets.Image(),
                                                                    **{c: datasets.Value("string") for c in captions}}))
    wiki = datasets.Dataset.from_dict({"id": list("12345"), "url": ["u"] * 5, "title": ["t"] * 5,
                                       "text": [f"doc {i}" for i in range(5)]})
    calls = fake_hub(monkeypatch, {("jxie/flickr8k", "validation"): flickr, ("wikimedia/wikipedia", "train"): wiki})
    monkeypatch.setitem(catalog.CATALOG, "wikipedia", dataclasses.replace(catalog.CATALOG["wikipedia"], shard_rows=2))
    out = online / "fetched"
    fetch.fetch("flickr8k", out, ["dev"])
    table = pq.read_table(out / "flickr8k" / "validation.parquet")
    assert table.column_names == ["image", "captions"] and table["captions"][1].as_py() == [f"b {i}" for i in range(5)]
    fetch.fetch("wikipedia", out, max_rows=5)
    assert sorted(p.name for p in (out / "wikipedia").iterdir()) == [f"train-0000{i}.parquet" for i in range(3)]
    assert calls[-1] == ("wikimedia/wikipedia", "20231101.en", "train", True)
    monkeypatch.setenv("XFORMER_DATA", str(out))
    assert read_documents("wikipedia") == [f"doc {i}" for i in range(5)]


def test_fetch_offline_or_unknown_is_one_line_exit_2(nowhere, capsys):
    assert fetch.main(["cifar10", "--out", str(nowhere / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: fetch 'cifar10': the HF hub is off") and "\n" not in err
    assert fetch.main(["imagenet", "--out", str(nowhere / "out")]) == 2
    assert "not a catalogue name (names: wikipedia, cifar10" in capsys.readouterr().err
    assert not (nowhere / "out").exists()


# ----------------------------------------------------------------------------- streaming


def test_streamed_corpus_is_read_in_batches_up_to_max_documents(online, monkeypatch):
    produced = []

    def endless():
        for i in itertools.count():
            produced.append(i)
            yield {"id": str(i), "url": "u", "title": "t", "text": "" if i % 3 == 0 else f"article {i}"}

    stream = datasets.IterableDataset.from_generator(endless)
    calls = fake_hub(monkeypatch, {("wikimedia/wikipedia", "train"): stream})
    docs = read_documents("wikipedia", max_documents=5)
    assert docs == ["article 1", "article 2", "article 4", "article 5", "article 7"]  # blank ones skipped
    assert calls == [("wikimedia/wikipedia", "20231101.en", "train", True)]
    assert len(produced) <= 2000  # stopped after the batch that reached max_documents
