"""Image data: Parquet / image-folder / hub sources, column detection, the decode cache, splits, errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from xformer.data.configs import ImageDataConfig
from xformer.data.image import images as images_module
from xformer.data.image.images import load_image_data
from xformer.errors import XformerError
from conftest import shared_data

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def png(value: int, size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    """A PNG whose every pixel is ``value``, so a decoded image tells which row it came from."""
    buf = io.BytesIO()
    Image.new(mode, size, (value,) * len(mode) if mode != "L" else value).save(buf, format="PNG")
    return buf.getvalue()


def write_parquet(
    path: Path, labels: list, names: list[str] | None = None, sizes: list | None = None,
    image_column: str = "img", label_column: str = "label", struct: bool = True,
) -> Path:
    """Row i: an image of value i (HF Image struct, or raw bytes), label ``labels[i]``; optional ClassLabel names."""
    encoded = [png(i, sizes[i] if sizes else (8, 8)) for i in range(len(labels))]
    column = pa.array([{"bytes": b, "path": None} for b in encoded]) if struct else pa.array(encoded, pa.binary())
    table = pa.table({image_column: column, label_column: labels})
    if names is not None:
        features = {image_column: {"_type": "Image"}, label_column: {"names": names, "_type": "ClassLabel"}}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, path)
    return path


def load(tmp_path: Path, source, **settings):
    return load_image_data(ImageDataConfig(source=source, **settings), cache_dir=tmp_path / "cache")


def row_ids(ds) -> set[int]:
    """Which rows of a write_parquet file a dataset holds (each image is filled with its row number)."""
    return set(ds.images[:, 0, 0, 0].tolist())


def test_parquet_with_class_label_names(tmp_path):
    path = write_parquet(tmp_path / "train.parquet", [i % 3 for i in range(30)], names=["cat", "dog", "emu"])
    data = load(tmp_path, str(path), val_size=6)
    assert data.class_names == ["cat", "dog", "emu"] and data.num_classes == 3
    assert data.train.images.shape == (24, 3, 8, 8) and data.train.images.dtype == torch.uint8
    assert len(data.val) == 6 and data.test is None
    assert all(data.train.labels[i] == data.train.images[i, 0, 0, 0] % 3 for i in range(24))
    batch = data.train.batch(np.array([3, 0]))
    assert batch["pixel_values"].shape == (2, 3, 8, 8) and batch["pixel_values"].dtype == torch.uint8
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == data.train.labels[[3, 0]].tolist()


def test_label_values_name_the_classes_without_metadata(tmp_path):
    ints = load(tmp_path, str(write_parquet(tmp_path / "a.parquet", [7, 3, 7, 3])), val_size=0)
    assert ints.class_names == ["3", "7"] and ints.train.labels.tolist() == [1, 0, 1, 0] and ints.val is None
    words = load(tmp_path, str(write_parquet(tmp_path / "b.parquet", ["dog", "cat", "dog"])), val_size=0)
    assert words.class_names == ["cat", "dog"] and words.train.labels.tolist() == [1, 0, 1]


def test_image_folder(tmp_path):
    root = tmp_path / "folder"
    for cls, values in (("zebra", [1, 2]), ("ant", [3]), ("bee", [4, 5, 6])):
        (root / cls).mkdir(parents=True)
        for v in values:
            (root / cls / f"{v}.png").write_bytes(png(v, mode="L"))  # greyscale comes back as RGB
    (root / "bee" / "notes.txt").write_text("not an image")
    data = load(tmp_path, str(root), val_size=0)
    assert data.class_names == ["ant", "bee", "zebra"]
    assert data.train.images.shape == (6, 3, 8, 8)
    names = [data.class_names[y] for y in data.train.labels]
    assert dict(zip(data.train.images[:, 1, 0, 0].tolist(), names)) == {
        1: "zebra", 2: "zebra", 3: "ant", 4: "bee", 5: "bee", 6: "bee"
    }


def test_column_auto_detection(tmp_path):
    named = write_parquet(tmp_path / "a.parquet", [0, 1], image_column="picture", label_column="target")
    assert load(tmp_path, str(named), val_size=0).train.images.shape == (2, 3, 8, 8)
    odd = write_parquet(tmp_path / "b.parquet", [0, 1], image_column="photo", label_column="fine_label")
    assert load(tmp_path, str(odd), val_size=0).train.labels.tolist() == [0, 1]
    raw = write_parquet(tmp_path / "c.parquet", [1, 0], image_column="image", struct=False)
    assert row_ids(load(tmp_path, str(raw), val_size=0).train) == {0, 1}
    chosen = load(tmp_path, str(named), val_size=0, image_column="picture", label_column="target")
    assert chosen.train.labels.tolist() == [0, 1]


def test_decoded_once_then_cached(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "train.parquet", list(range(10)) * 2)
    first = load(tmp_path, str(path), val_size=4)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(images_module, "decode_image", no_decoding)
    second = load(tmp_path, str(path), val_size=4)
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.val.labels, second.val.labels)
    with pytest.raises(AssertionError, match="decoded again"):  # settings that change the pixels miss the cache
        load(tmp_path, str(path), val_size=4, image_size=4)


def test_validation_carve_is_disjoint_and_fixed_by_the_seed(tmp_path):
    path = str(write_parquet(tmp_path / "train.parquet", [i % 4 for i in range(40)]))
    data = load(tmp_path, path, val_size=10, seed=0)
    train, val = row_ids(data.train), row_ids(data.val)
    assert len(val) == 10 and not train & val and train | val == set(range(40))
    assert row_ids(load(tmp_path, path, val_size=10, seed=0).val) == val
    assert row_ids(load(tmp_path, path, val_size=10, seed=1).val) != val


def test_validation_and_test_sources_map_onto_training_classes(tmp_path):
    train = write_parquet(tmp_path / "train.parquet", [0, 1, 2, 0], names=["a", "b", "c"])
    val = write_parquet(tmp_path / "val.parquet", [0, 1], names=["c", "a"])  # same classes, other order
    test = write_parquet(tmp_path / "test.parquet", [2, 2, 1])  # plain indices
    data = load(tmp_path, str(train), val_source=str(val), test_source=str(test))
    assert len(data.train) == 4 and data.val.labels.tolist() == [2, 0] and data.test.labels.tolist() == [2, 2, 1]
    unknown = write_parquet(tmp_path / "other.parquet", [0], names=["zebra"])
    with pytest.raises(XformerError, match="data.val_source: label 'zebra'"):
        load(tmp_path, str(train), val_source=str(unknown))


def test_globs_lists_and_max_images(tmp_path):
    for part in range(3):
        write_parquet(tmp_path / f"part-{part}.parquet", [0, 1, 0, 1])
    assert len(load(tmp_path, str(tmp_path / "part-*.parquet"), val_size=2).train) == 10
    listed = [str(tmp_path / "part-0.parquet"), str(tmp_path / "part-2.parquet")]
    assert len(load(tmp_path, listed, val_size=0).train) == 8
    assert len(load(tmp_path, str(tmp_path / "part-*.parquet"), val_size=0, max_images=5).train) == 5


def test_mixed_sizes_need_image_size(tmp_path):
    path = write_parquet(tmp_path / "mixed.parquet", [0, 1, 0], sizes=[(8, 8), (8, 8), (12, 10)])
    with pytest.raises(XformerError) as err:
        load(tmp_path, str(path), val_size=0)
    msg = str(err.value)
    assert "mixed.parquet row 2" in msg and "12x10" in msg and "8x8" in msg and "data.image_size" in msg
    resized = load(tmp_path, str(path), val_size=0, image_size=6)
    assert resized.train.images.shape == (3, 3, 6, 6)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"label_column": "category"}, "no column 'category' (columns: img, label)"),
        ({"image_column": "pixels"}, "no column 'pixels' (columns: img, label)"),
        ({"image_column": "label"}, "column 'label' does not hold encoded images"),
        ({"val_size": 4}, "data.val_size=4 leaves no training images"),
        ({"val_split": "validation"}, "data.val_split='validation' needs an HF dataset name"),
    ],
)
def test_errors_name_the_setting(tmp_path, settings, message):
    path = write_parquet(tmp_path / "train.parquet", [0, 1, 0, 1])
    with pytest.raises(XformerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(tmp_path, str(path), **settings)


def test_errors_for_missing_or_unusable_sources(tmp_path):
    with pytest.raises(XformerError, match="data.source '.*nope.parquet': no such file"):
        load(tmp_path, str(tmp_path / "nope.parquet"))
    with pytest.raises(XformerError, match="matches no .parquet files"):
        load(tmp_path, str(tmp_path / "none-*.parquet"))
    pq.write_table(pa.table({"id": [1, 2], "label": [0, 1]}), tmp_path / "no_images.parquet")
    with pytest.raises(XformerError, match="no image column found .columns: id, label."):
        load(tmp_path, str(tmp_path / "no_images.parquet"))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    empty = pa.table({"img": pa.array([], image_type), "label": pa.array([], pa.int64())})
    pq.write_table(empty, tmp_path / "empty.parquet")
    with pytest.raises(XformerError, match="no images"):
        load(tmp_path, str(tmp_path / "empty.parquet"))
    pq.write_table(pa.table({"img": [{"bytes": b"not a png", "path": None}], "label": [0]}), tmp_path / "bad.parquet")
    with pytest.raises(XformerError, match="bad.parquet row 0: not a readable image"):
        load(tmp_path, str(tmp_path / "bad.parquet"), val_size=0)


def test_hub_name_offline_points_to_local_parquet(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(XformerError) as err:
        load(tmp_path, "someone/no-such-images")
    msg = str(err.value)
    assert "hub is unreachable" in msg and "cifar10/train.parquet" in msg and "\n" not in msg


def test_hub_dataset_splits(tmp_path, monkeypatch):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["no", "yes"])})
    splits = {
        split: datasets.Dataset.from_dict(
            {"image": [{"bytes": png(v), "path": None} for v in values], "label": [v % 2 for v in values]}, features
        )
        for split, values in (("train", range(10)), ("test", [20, 21, 22]))
    }
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return splits[split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load(tmp_path, "someone/pictures", val_size=2, test_split="test")
    assert calls == [("someone/pictures", "train"), ("someone/pictures", "test")]
    assert data.class_names == ["no", "yes"] and len(data.train) == 8 and len(data.val) == 2
    assert row_ids(data.test) == {20, 21, 22} and data.test.labels.tolist() == [0, 1, 0]


def test_real_cifar10_rows(tmp_path):
    data = load(tmp_path, str(shared_data("cifar10", "train.parquet")), max_images=500, val_size=100)
    assert data.class_names == CIFAR_CLASSES
    assert data.train.images.shape == (400, 3, 32, 32) and len(data.val) == 100
    assert set(data.train.labels.tolist()) == set(range(10))
    assert 60 < data.train.images.float().mean() < 180  # real photographs, not blanks
