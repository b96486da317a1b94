"""``xformer.load`` and ``init_from`` on every kind of input, and their one-line errors."""

from __future__ import annotations

import pytest
import torch
import yaml

import xformer
from xformer.commands.cli import main
from xformer.config import save_config
from xformer.models.bert import BertClassifierConfig, BertConfig
from xformer.models.cnn import CNNConfig
from xformer.models.vit import ViTConfig
from xformer.errors import XformerError
from xformer.trained.init import init_from, load_weights
from xformer.models import CNN, BertForPreTraining, BertModel, ViTForImageClassification


def _checkpoint(tmp_path, model, task: str):
    from xformer.train.checkpoint import save_checkpoint
    from xformer.tasks import get_task

    cfg = get_task(task).config(model=model.config)
    save_checkpoint(tmp_path / "run", 1, model, cfg, {"step": 1}, keep_last=1)
    save_config(cfg, tmp_path / "run" / "config.yaml")
    return tmp_path / "run"


def test_load_rejects_what_is_not_a_path():
    for bad in (None, "", 3):
        with pytest.raises(XformerError, match="expected an xformer run directory"):
            xformer.load(bad)


def test_incomplete_checkpoint_config_is_one_line(tmp_path):
    run = _checkpoint(tmp_path, BertForPreTraining(BertConfig(vocab_size=50, dim=16, depth=1, num_heads=2)),
                      "bert_pretraining")
    ckpt = next((run / "checkpoints").iterdir())
    (ckpt / "manifest.json").unlink(missing_ok=True)  # as written before manifests: a sealed one is refused
    tree = yaml.safe_load((ckpt / "config.yaml").read_text())
    tree["model"]["vocab_size"] = None
    (ckpt / "config.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(XformerError, match="incomplete model config.*vocab_size"):
        xformer.load(ckpt)
    (ckpt / "config.yaml").write_text("task: bert_pretraining\n")
    with pytest.raises(XformerError, match="no model section"):
        xformer.load(ckpt)


def test_load_reads_hf_vit_directories(tmp_path):
    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTForImageClassification as HFViT

    HFViT(HFViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, num_labels=3)).save_pretrained(tmp_path / "vit")
    model = xformer.load(tmp_path / "vit")
    assert isinstance(model, ViTForImageClassification) and model.head.out_features == 3


def test_init_from_a_bert_run_into_a_classifier_keeps_runtime_keys(tmp_path):
    source = BertForPreTraining(BertConfig(vocab_size=50, dim=16, depth=1, num_heads=2, max_position=128))
    run = _checkpoint(tmp_path, source, "bert_pretraining")
    recipe = BertClassifierConfig(init=str(run), num_classes=3, dropout=0.25, dim=64, attn_backend="math")
    model, resolved = init_from(recipe)
    assert (resolved.dim, resolved.num_classes, resolved.dropout, resolved.attn_backend) == (16, 3, 0.25, "math")
    assert recipe.dim == 64  # the caller's config is not changed
    for name, p in source.bert.state_dict().items():
        torch.testing.assert_close(model.bert.state_dict()[name], p, msg=name)


def test_init_from_the_wrong_family_or_shape_is_refused(tmp_path):
    vit = ViTForImageClassification(ViTConfig(image_size=8, patch_size=4, dim=16, depth=1, num_heads=2, num_classes=2))
    run = _checkpoint(tmp_path, vit, "image_classification")
    with pytest.raises(XformerError, match="not a BERT checkpoint"):
        init_from(BertConfig(init=str(run)))
    cnn = CNN(CNNConfig(num_classes=3, image_size=8))
    with pytest.raises(XformerError, match="does not fit"):
        load_weights(cnn, BertModel(BertConfig(vocab_size=20, dim=16, depth=1, num_heads=2)), "model.init=x")


def test_cnn_from_a_run_gets_a_new_head_for_other_classes(tmp_path):
    source = CNN(CNNConfig(num_classes=3, image_size=8, channels=(4, 4, 4), hidden=8))
    run = _checkpoint(tmp_path, source, "image_classification")
    model, resolved = init_from(CNNConfig(init=str(run), num_classes=5, image_size=8))
    assert resolved.channels == (4, 4, 4) and model.head.out_features == 5
    torch.testing.assert_close(model.features[0][0].weight, source.features[0][0].weight)


def test_cli_messages_name_what_is_wrong(tmp_path, capsys):
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    assert main(["train", str(tmp_path / "binary.yaml")]) == 2
    assert "not a text file" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing-run"), "--data", "x.parquet"]) == 2
    err = capsys.readouterr().err
    assert "no such run directory" in err and "recipe" not in err
    assert main(["train", "recipes/bert_tiny.yaml", "--set", "train.device=gpu"]) == 2
    assert "train.device" in capsys.readouterr().err
