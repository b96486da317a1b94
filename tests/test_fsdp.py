"""FSDP (train.parallel=fsdp) on CPU with gloo: 2 sharded processes train like 1 with the whole batch (BERT,
ViT, CLIP), and their sharded (DCP) checkpoints resume on another number of processes and load and export as
one file. Also 2 DDP processes of augmented image classification, each augmenting only its own rows."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from tests.test_classify import VIT, image_config, losses, make_images
from tests.test_trainer import free_port, train_losses
from xformer.train.checkpoint import latest_checkpoint, list_checkpoints
from xformer.tasks import run as train
from xformer.train.loop import Trainer

NO_DROPOUT = ["model.dropout=0", "model.attn_dropout=0"]


class Stop(Exception):
    """Interrupts a run before a step, as a crash would (the schedule stays that of the whole run)."""


def stop_before(step: int):
    real = Trainer.train_step

    def train_step(self, s):
        if s == step:
            raise Stop
        return real(self, s)

    return train_step


def worker(rank, world, port, cfg, resume, stop):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    if stop is not None:
        Trainer.train_step = stop_before(stop)
    try:
        train(cfg, resume=resume)
    except Stop:
        pass


def run_two(cfg, resume=False, stop=None):
    mp.start_processes(worker, args=(2, free_port(), cfg, resume, stop), nprocs=2, join=True, start_method="spawn")


def close(a: dict, b: dict, steps):
    for s in steps:
        assert abs(a[s] - b[s]) < 1e-5, (s, a[s], b[s])


def test_bert_two_sharded_processes_match_one(tiny_config, tmp_path):
    common = ["train.max_steps=5", "train.grad_accum=2", *NO_DROPOUT]  # gradients reduced on the last micro-step
    train(tiny_config(*common, "train.batch_size=8", f"out_dir={tmp_path / 'one'}"))
    run_two(tiny_config(*common, "train.parallel=fsdp", "train.batch_size=4", f"out_dir={tmp_path / 'two'}"))
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 6))
    close(one, two, one)
    # the sharded run's full model.safetensors (tied embeddings stored once) loads like the plain run's
    from xformer.trained.loading import load

    assert (latest_checkpoint(tmp_path / "two") / "dcp").is_dir()
    sharded, plain = load(tmp_path / "two").state_dict(), load(tmp_path / "one").state_dict()
    assert sharded.keys() == plain.keys()
    for name in plain:
        assert torch.allclose(sharded[name], plain[name], atol=1e-5), name


@pytest.fixture(scope="module")
def image_parquet(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, labels = make_images(160)
    path = tmp_path_factory.mktemp("images") / "train.parquet"
    pq.write_table(pa.table({"img": images, "label": labels}), path)
    return path


def test_vit_two_sharded_processes_match_one_and_the_checkpoint_loads_and_exports(image_parquet, tmp_path):
    from xformer.trained.loading import load
    from xformer.tasks.image_classification import export

    common = [*VIT, "train.max_steps=5", "train.eval_every=5", "train.save_every=5", "data.val_size=32"]
    train(image_config(image_parquet, tmp_path, *common, "train.batch_size=16", f"out_dir={tmp_path / 'one'}"))
    run_two(image_config(image_parquet, tmp_path, *common, "train.parallel=fsdp", "train.batch_size=8",
                         f"out_dir={tmp_path / 'two'}"))
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 5
    close(dict(enumerate(one)), dict(enumerate(two)), range(5))
    ckpt = latest_checkpoint(tmp_path / "two")
    assert (ckpt / "dcp").is_dir() and (ckpt / "model.safetensors").is_file()
    sharded, plain = load(tmp_path / "two"), load(tmp_path / "one")
    for (n, a), (_, b) in zip(sharded.state_dict().items(), plain.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), n
    export(tmp_path / "two", tmp_path / "hf")
    from transformers import ViTForImageClassification

    assert ViTForImageClassification.from_pretrained(tmp_path / "hf").config.num_labels == 4


def test_sharded_checkpoint_resumes_on_one_process_and_a_full_one_on_two(tiny_config, tmp_path, monkeypatch):
    common = ["train.max_steps=6", "train.save_every=3", *NO_DROPOUT]
    straight = tmp_path / "straight"
    train(tiny_config(*common, "train.batch_size=8", f"out_dir={straight}"))
    # 2 -> 1: a 2-process FSDP run stops after step 3 with a DCP checkpoint; one process finishes it
    run_two(tiny_config(*common, "train.batch_size=4", "train.parallel=fsdp", f"out_dir={tmp_path / 'down'}"),
            stop=3)
    assert [p.name for p in list_checkpoints(tmp_path / "down")] == ["step_0000003"]
    assert (latest_checkpoint(tmp_path / "down") / "dcp").is_dir()
    train(tiny_config(*common, "train.batch_size=8", f"out_dir={tmp_path / 'down'}"), resume=True)
    close(train_losses(straight), train_losses(tmp_path / "down"), range(1, 7))
    # 1 -> 2: a 1-process run's full checkpoint, sharded on load by a 2-process FSDP run
    monkeypatch.setattr(Trainer, "train_step", stop_before(3))
    with pytest.raises(Stop):
        train(tiny_config(*common, "train.batch_size=8", "train.parallel=fsdp", f"out_dir={tmp_path / 'up'}"))
    monkeypatch.undo()
    assert not (latest_checkpoint(tmp_path / "up") / "dcp").exists()
    run_two(tiny_config(*common, "train.batch_size=4", "train.parallel=fsdp", f"out_dir={tmp_path / 'up'}"),
            resume=True)
    close(train_losses(straight), train_losses(tmp_path / "up"), range(1, 7))


def test_vit_two_processes_augmenting_their_own_rows_match_one(image_parquet, tmp_path):
    from xformer.tasks.image_classification import ImageClassificationTask

    assert ImageClassificationTask.local_rows  # each process reads and augments only its rows
    # crop, flip, TrivialAugment, label smoothing, and mixup or cutmix (one of the two each step)
    augment = ["augment.crop_padding=2", "augment.hflip=true", "augment.policy=trivial", "augment.mixup_alpha=0.8",
               "augment.cutmix_alpha=1.0", "augment.label_smoothing=0.1"]
    common = [*VIT, *augment, "train.max_steps=5", "train.eval_every=5", "train.save_every=5", "data.val_size=32"]
    train(image_config(image_parquet, tmp_path, *common, "train.batch_size=16", f"out_dir={tmp_path / 'one'}"))
    run_two(image_config(image_parquet, tmp_path, *common, "train.batch_size=8", f"out_dir={tmp_path / 'two'}"))
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 5
    close(dict(enumerate(one)), dict(enumerate(two)), range(5))


def test_clip_two_sharded_processes_match_one_and_evaluate(tmp_path):
    import json

    from tests.test_clip import write_labelled, write_pairs
    from xformer.commands.recipe import load_recipe

    args = [
        f"data.source={write_pairs(tmp_path / 'pairs.parquet', 48)}",
        f"data.val_source={write_pairs(tmp_path / 'dev.parquet', 16, seed=1)}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.tokenizer.vocab_size=200", "data.max_text_len=12",
        "model.vision={image_size: 16, patch_size: 8, dim: 32, depth: 2, num_heads: 2, dropout: 0}",
        "model.text={dim: 32, depth: 2, num_heads: 2, max_position: 12, dropout: 0, attn_dropout: 0}",
        "model.embed_dim=16", "augment.hflip=true",
        f"eval.source={write_labelled(tmp_path / 'colours.parquet', 16)}", "eval.templates=['a {c} square']",
        "train.epochs=null", "train.max_steps=4", "train.lr=2e-3", "train.warmup_steps=2", "train.log_every=1",
        "train.eval_every=4", "train.save_every=4", "train.progress=false", "train.device=cpu",
    ]
    train(load_recipe("recipes/clip_small.yaml", [*args, "train.batch_size=16", f"out_dir={tmp_path / 'one'}"]))
    run_two(load_recipe("recipes/clip_small.yaml", [*args, "train.batch_size=8", "train.parallel=fsdp",
                                                    f"out_dir={tmp_path / 'two'}"]))
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    close(one, two, one)
    # zero-shot and retrieval ran encode_image / encode_text on the sharded model, as FSDP forward methods
    val_one, val_two = (json.loads((tmp_path / r / "eval_final.json").read_text()) for r in ("one", "two"))
    assert {"zs_top1", "t2i_R@1"} <= set(val_two)
    close(val_one, val_two, val_one)
    from xformer.trained.loading import load

    assert (latest_checkpoint(tmp_path / "two") / "dcp").is_dir()
    sharded, plain = load(tmp_path / "two").state_dict(), load(tmp_path / "one").state_dict()
    for name in plain:
        assert torch.allclose(sharded[name], plain[name], atol=1e-5), name
