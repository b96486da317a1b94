"""Fine-tuning a ViT classifier from an MAE run (issue 22): its encoder taken whole and the decoder left behind,
sizes that differ refused, the GAP + LayerNorm and BatchNorm-probe heads, layer-wise LR decay (ViT and BERT),
a linear probe that leaves the encoder as it was, and the encoder exported as ``transformers.ViTModel``."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers
from safetensors.torch import load_file

from tests.test_classify import image_config, losses, make_images
from xformer.commands.cli import main
from xformer.config import TrainConfig
from xformer.errors import XformerError
from xformer.interop.hf_vit import export_vit
from xformer.models.bert import BertClassifierConfig, BertForSequenceClassification
from xformer.models.vit import ViTConfig, ViTForImageClassification
from xformer.tasks import read_run_config
from xformer.tasks import run as train_classifier
from xformer.train.checkpoint import latest_checkpoint
from xformer.train.finetune import FinetuneConfig, finetune_param_groups
from xformer.train.optimizer import build_optimizer
from xformer.trained.init import init_from
from xformer.trained.loading import load

TINY = ["model.image_size=16", "model.patch_size=4", "model.dim=32", "model.depth=2", "model.num_heads=2",
        "model.mlp_ratio=2"]
RUN = ["train.batch_size=16", "train.warmup_steps=2", "train.epochs=null", "train.eval_batches=null",
       "train.log_every=1", "train.progress=false", "train.device=cpu"]


def sets(*overrides: str) -> list[str]:
    return [f"--set={o}" for o in overrides]


@pytest.fixture(scope="module")
def image_parquet(tmp_path_factory):
    images, labels = make_images(240)
    path = tmp_path_factory.mktemp("images") / "train.parquet"
    pq.write_table(pa.table({"img": images, "label": labels}), path)
    return path


@pytest.fixture(scope="module")
def mae_run(image_parquet, tmp_path_factory):
    """A tiny ``xformer pretrain recipes/mae_cifar.yaml`` run (the labels unread) and its model."""
    root = tmp_path_factory.mktemp("mae")
    assert main(["pretrain", "recipes/mae_cifar.yaml", *sets(
        f"data.source={image_parquet}", f"data.cache_dir={root / 'cache'}", f"out_dir={root / 'run'}", *TINY, *RUN,
        "model.decoder_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2", "data.val_size=16",
        "train.max_steps=3", "train.eval_every=3", "train.save_every=3", "eval.pictures=0")]) == 0
    return root / "run", load(root / "run", attn_backend="math")


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
    both = "model.dim: the run's 32, the recipe's 64; model.depth: the run's 2, the recipe's 3"
    with pytest.raises(XformerError, match=both):
        init_from(ViTConfig(init=str(run), num_classes=3, dim=64, depth=3, patch_size=4))
    recipe = tmp_path / "finetune.yaml"
    recipe.write_text(f"task: image_classification\nmodel: {{init: {run}, image_size: 32, patch_size: 4}}\n")
    assert main(["train", str(recipe), "--out", str(tmp_path / "x"), *sets(
        f"data.source={image_parquet}", f"data.cache_dir={tmp_path / 'cache'}", "data.val_size=40",
        "train.device=cpu", "train.max_steps=2")]) == 2
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
    run, mae = mae_run
    assert main(["export", str(run), str(tmp_path / "hf"), "--format", "ViTModel"]) == 0
    assert "transformers.ViTModel" in capsys.readouterr().out
    hf = transformers.ViTModel.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = hf(pixel_values=x).last_hidden_state
        ours = mae.vit(x).last_hidden_state  # the whole image, nothing masked
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_the_finetune_recipe_trains_from_the_run_and_exports_its_encoder(mae_run, image_parquet, tmp_path, capsys):
    run, _ = mae_run
    out = tmp_path / "ft"
    assert main(["train", "recipes/vit_finetune_mae.yaml", *sets(
        f"model.init={run}", f"data.source={image_parquet}", f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={out}",
        *TINY, *RUN, "data.val_size=40", "train.max_steps=4", "train.eval_every=4", "train.save_every=4")]) == 0
    err = capsys.readouterr().err
    assert err.count("left behind") == 1 and "decoder (" in err
    saved = read_run_config(out).model
    assert (saved.pool, saved.head_norm, saved.init, saved.dim) == ("mean", "layer", str(run), 32)
    # its head has no HF ViTForImageClassification equivalent: one line naming the way out
    assert main(["export", str(out), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "model.pool='mean'" in err[-1] and "--format ViTModel" in err[-1], err
    assert main(["export", str(out), str(tmp_path / "hf"), "--format", "ViTModel"]) == 0
    trained = load(out, attn_backend="math")
    hf = transformers.ViTModel.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).last_hidden_state, trained.vit(x).last_hidden_state,
                                   atol=1e-5, rtol=0)
    with pytest.raises(XformerError, match="model.head_norm='batch'.*--format ViTModel"):
        export_vit(init_from(ViTConfig(init=str(run), num_classes=3, head_norm="batch"))[0], tmp_path / "x")
