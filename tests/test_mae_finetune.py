"""Fine-tuning a ViT classifier from an MAE run (issue 22): its encoder taken whole and the decoder left behind,
sizes that differ refused, the GAP + LayerNorm and BatchNorm-probe heads, layer-wise LR decay (ViT and BERT),
a linear probe that leaves the encoder as it was, and the encoder exported as ``transformers.ViTModel``."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import randomize
from tests.test_classify import image_config, losses, make_images
from xformer.commands.cli import main
from xformer.config import RunConfig, save_config
from xformer.errors import XformerError
from xformer.models.bert import BertClassifierConfig, BertForSequenceClassification
from xformer.models.vit import ViTConfig, ViTForImageClassification
from xformer.models.vit_mae import ViTMAEConfig, ViTMAEForPreTraining
from xformer.tasks import run as train_classifier
from xformer.train.checkpoint import latest_checkpoint, save_checkpoint
from xformer.train.finetune import FinetuneConfig, finetune_param_groups
from xformer.train.optimizer import build_optimizer
from xformer.config import TrainConfig
from xformer.trained.init import init_from

ENCODER = dict(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2)


class MAERun(RunConfig):
    """What an MAE run's config.yaml holds that loading reads: its model section."""

    task: str = "mae"
    model: ViTMAEConfig


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    """A run directory of a small MAE (random weights, written as the trainer writes its checkpoints)."""
    model = randomize(ViTMAEForPreTraining(ViTMAEConfig(**ENCODER, decoder_dim=16, decoder_depth=1,
                                                        decoder_num_heads=2, attn_backend="math")))
    run = tmp_path_factory.mktemp("mae") / "run"
    cfg = MAERun(model=model.config)
    save_checkpoint(run, 1, model, cfg, {"step": 1}, keep_last=1)
    save_config(cfg, run / "config.yaml")
    return run, model


@pytest.fixture(scope="module")
def image_parquet(tmp_path_factory):
    images, labels = make_images(240)
    path = tmp_path_factory.mktemp("images") / "train.parquet"
    pq.write_table(pa.table({"img": images, "label": labels}), path)
    return path


def test_init_takes_the_encoder_and_leaves_the_decoder_behind(mae_run, capsys):
    run, mae = mae_run
    model, resolved = init_from(ViTConfig(init=str(run), num_classes=3, pool="mean", head_norm="layer"))
    assert isinstance(model, ViTForImageClassification) and resolved.dim == 32 and resolved.pool == "mean"
    encoder = mae.vit.state_dict()
    assert model.vit.state_dict().keys() == encoder.keys()
    for name, tensor in encoder.items():
        assert torch.equal(model.vit.state_dict()[name], tensor), name
    assert model.vit.embeddings.position.requires_grad  # fixed in the MAE, learnt in fine-tuning (as MAE)
    notices = [line for line in capsys.readouterr().err.splitlines() if "left behind" in line]
    assert len(notices) == 1 and "decoder (" in notices[0] and str(run) in notices[0], notices
    # the head: mean of the patch tokens, LayerNorm, linear
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        hidden = model.vit(x).last_hidden_state
        torch.testing.assert_close(model(x).logits, model.head(model.head_norm(hidden[:, 1:].mean(1))))


def test_an_encoder_of_another_size_is_one_error_line(mae_run, image_parquet, tmp_path, capsys):
    run, _ = mae_run
    with pytest.raises(XformerError, match="model.dim: the run's 32, the recipe's 64; model.depth: the run's 2, the recipe's 3"):
        init_from(ViTConfig(init=str(run), num_classes=3, dim=64, depth=3, patch_size=4))
    recipe = tmp_path / "finetune.yaml"
    recipe.write_text(f"task: image_classification\nmodel: {{init: {run}, image_size: 32, patch_size: 4}}\n")
    args = [f"data.source={image_parquet}", f"data.cache_dir={tmp_path / 'cache'}", "data.val_size=40",
            "train.device=cpu", "train.max_steps=2"]
    assert main(["train", str(recipe), "--out", str(tmp_path / "x"), *[a for s in args for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # [data] progress lines, then the error
    assert [line for line in err if line.startswith("error: ")] == err[-1:] and "Traceback" not in "".join(err)
    assert "model.image_size: the run's 16, the recipe's 32" in err[-1], err


def test_layer_decay_gives_each_block_its_lr():
    decay, lr, depth = 0.65, 1e-3, 3
    vit = ViTForImageClassification(ViTConfig(image_size=8, patch_size=4, dim=16, depth=depth, num_heads=2,
                                               num_classes=2, head_norm="layer"))
    bert = BertForSequenceClassification(BertClassifierConfig(vocab_size=20, dim=16, depth=depth, num_heads=2,
                                                              num_classes=2))
    for model, prefix in ((vit, "vit"), (bert, "bert")):
        groups = finetune_param_groups(model, FinetuneConfig(layer_decay=decay), weight_decay=0.05)
        opt = build_optimizer(groups, TrainConfig(lr=lr), torch.device("cpu"))
        lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        for name, p in model.named_parameters():
            if name.startswith(f"{prefix}.embeddings."):
                expected = lr * decay ** (depth + 1)
            elif name.startswith(f"{prefix}.encoder.blocks."):
                expected = lr * decay ** (depth - int(name.split(".")[3]))
            else:  # final norm, pooler, head norm, head
                expected = lr
            assert lr_of[id(p)] == pytest.approx(expected), name
    assert lr_of[id(bert.bert.pooler.weight)] == lr and lr_of[id(bert.head.weight)] == lr


def test_linear_probe_leaves_the_encoder_as_it_was(mae_run, image_parquet, tmp_path):
    run, mae = mae_run
    cfg = image_config(image_parquet, tmp_path, "model.arch=vit", f"model.init={run}", "model.head_norm=batch",
                       "finetune.freeze=backbone", "train.optimizer=sgd", "train.lr=0.1", "train.weight_decay=0",
                       "train.max_steps=30", "train.eval_every=30", "train.save_every=30", "data.val_size=40")
    train_classifier(cfg)
    trained = load_file(latest_checkpoint(tmp_path / "run") / "model.safetensors")
    for name, tensor in mae.vit.state_dict().items():
        assert torch.equal(trained[f"vit.{name}"], tensor), name
    fresh = init_from(cfg.model.model_copy(update={"num_classes": 4}))[0].state_dict()
    assert not torch.equal(trained["head.weight"], fresh["head.weight"])
    assert not torch.equal(trained["head_norm.running_mean"], fresh["head_norm.running_mean"])
    assert not any(k.startswith("head_norm.") and k.endswith(("weight", "bias")) for k in trained)  # no affine
    trace = losses(tmp_path / "run")
    assert sum(trace[-5:]) < sum(trace[:5]) - 0.5, trace


def test_the_encoder_exports_as_hf_vit_model(mae_run, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    run, mae = mae_run
    assert main(["export", str(run), str(tmp_path / "hf"), "--format", "ViTModel"]) == 0
    assert "transformers.ViTModel" in capsys.readouterr().out
    hf = transformers.ViTModel.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = hf(pixel_values=x).last_hidden_state
        ours = mae.vit(x).last_hidden_state  # the whole image, nothing masked
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_a_pooled_or_normed_head_is_refused_by_the_classifier_export(mae_run, tmp_path, capsys):
    from xformer.interop.hf_vit import export_vit

    run, _ = mae_run
    for change in ({"pool": "mean"}, {"head_norm": "batch"}):
        model, _ = init_from(ViTConfig(init=str(run), num_classes=3, **change))
        with pytest.raises(XformerError, match=f"model.{next(iter(change))}=.*--format ViTModel"):
            export_vit(model, tmp_path / "x")
