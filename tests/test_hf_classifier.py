"""Sequence classifiers against transformers' own: BertForSequenceClassification and
ModernBertForSequenceClassification with the same (randomised) weights give the same logits on sentence
pairs (token types, random padding; math and sdpa), the same regression loss, and import and export both
ways (xformer.load, model.init, xformer export of a fine-tuned run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_model

import xformer
from tests.helpers import randomize
from xformer.config import save_config
from xformer.interop import hf_bert, hf_modernbert
from xformer.models.bert import BertClassifierConfig, BertForSequenceClassification, BertModel
from xformer.tasks import text_classification
from xformer.tasks.text_classification import TextClassificationConfig, TextClassificationTask
from xformer.trained.init import init_from
from xformer.trained.loading import load_class_names, load_config

pytestmark = pytest.mark.usefixtures("offline")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]  # 100 tokens
CLS, SEP = 2, 3
T = 24  # longer than ModernBERT's local window (8), so its local blocks differ from its global ones
FAMILIES = {"bert": hf_bert, "modernbert": hf_modernbert}


def hf_config(family: str, num_labels: int, **changes) -> transformers.PretrainedConfig:
    """A small HF config of ``family`` with ``num_labels`` outputs, no dropout, eager attention."""
    common = dict(vocab_size=len(VOCAB), hidden_size=64, num_attention_heads=4, max_position_embeddings=64,
                  pad_token_id=0, num_labels=num_labels, attn_implementation="eager")
    if family == "bert":
        return transformers.BertConfig(**common, num_hidden_layers=2, intermediate_size=128, hidden_dropout_prob=0.0,
                                       attention_probs_dropout_prob=0.0, **changes)
    return transformers.ModernBertConfig(
        **common, num_hidden_layers=4, intermediate_size=96, local_attention=8, cls_token_id=CLS,
        sep_token_id=SEP, bos_token_id=CLS, eos_token_id=SEP, **changes)


def hf_classifier(family: str, num_labels: int, seed: int = 0, **changes) -> transformers.PreTrainedModel:
    cls = getattr(transformers, f"{'Bert' if family == 'bert' else 'ModernBert'}ForSequenceClassification")
    config = hf_config(family, num_labels, **changes)
    config.architectures = [cls.__name__]  # as save_pretrained writes it: what says "a classifier"
    return randomize(cls(config), seed)


def pairs(seed: int = 0, rows: int = 4) -> dict[str, torch.Tensor]:
    """``[CLS] a [SEP] b [SEP]`` of random lengths, right-padded to T (one row unpadded); token types 0 for
    ``[CLS] a [SEP]``, 1 for ``b [SEP]``, 0 on padding (as HF tokenizers)."""
    gen = torch.Generator().manual_seed(seed)
    ids, types = torch.zeros(rows, T, dtype=torch.long), torch.zeros(rows, T, dtype=torch.long)
    for r in range(rows):
        total = T if r == 0 else int(torch.randint(6, T, (1,), generator=gen))
        a = int(torch.randint(1, total - 4, (1,), generator=gen))  # the room left for b: total - 3 - a >= 1
        words = torch.randint(5, len(VOCAB), (total - 3,), generator=gen)
        cls, sep = torch.tensor([CLS]), torch.tensor([SEP])
        ids[r, :total] = torch.cat([cls, words[:a], sep, words[a:], sep])
        types[r, a + 2:total] = 1
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": types}


def hf_inputs(family: str, batch: dict) -> dict:
    """ModernBERT has no token types (our model ignores them without segment embeddings)."""
    return batch if family == "bert" else {k: v for k, v in batch.items() if k != "token_type_ids"}


def ours_from_hf(hf: transformers.PreTrainedModel, family: str, backend: str = "math") -> BertForSequenceClassification:
    module = FAMILIES[family]
    cfg = module.config_from_hf(hf.config)
    assert isinstance(cfg, BertClassifierConfig) and cfg.num_classes == hf.config.num_labels
    cfg.attn_backend = backend
    model = BertForSequenceClassification(cfg)
    model.load_state_dict(module.state_dict_from_hf(hf.state_dict(), cfg))  # strict: every key, nothing else
    return model.eval()


def logits_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- parity


@torch.no_grad()
@pytest.mark.parametrize("num_labels", [3, 1])
@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_bert_classifier_parity_on_pairs(backend, num_labels):
    hf = hf_classifier("bert", num_labels)
    ours = ours_from_hf(hf, "bert", backend)
    batch = pairs()
    logits = ours(**batch).logits
    assert logits.shape == (4, num_labels)
    logits_close(logits, hf(**batch).logits)
    # the token types matter: all-zero segments give other logits
    assert not torch.allclose(ours(**{**batch, "token_type_ids": torch.zeros_like(batch["input_ids"])}).logits,
                              logits, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_modernbert_classifier_parity_on_pairs(backend, pooling):
    hf = hf_classifier("modernbert", 3, classifier_pooling=pooling)
    ours = ours_from_hf(hf, "modernbert", backend)
    assert ours.config.classifier_pooling == pooling and ours.bert.pooler is None
    batch = pairs()
    logits_close(ours(**batch).logits, hf(**hf_inputs("modernbert", batch)).logits)


@torch.no_grad()
@pytest.mark.parametrize("num_labels", [1, 3])
@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_task_loss_equals_hf(family, num_labels):
    """The text-classification task's training loss: MSE on logits[:, 0] for one label (STS-B scores), as
    HF's problem_type "regression"; cross-entropy for classes."""
    hf = hf_classifier(family, num_labels)
    ours = ours_from_hf(hf, family)
    batch = pairs(seed=1)
    gen = torch.Generator().manual_seed(1)
    labels = torch.rand(4, generator=gen) * 5 if num_labels == 1 else torch.randint(0, 3, (4,), generator=gen)
    ref = hf(**hf_inputs(family, batch), labels=labels)
    assert hf.config.problem_type == ("regression" if num_labels == 1 else "single_label_classification")
    task = TextClassificationTask(None, None, num_labels)
    loss, _ = task.loss(ours, {**batch, "labels": labels}, task.normalizers({"labels": labels}))
    torch.testing.assert_close(loss, ref.loss, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- import


@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_load_reads_an_hf_classifier_directory(family, tmp_path):
    names = ["neg", "neutral", "pos"]
    hf = hf_classifier(family, 3, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    hf.save_pretrained(tmp_path / "hf")
    batch = pairs(seed=2)
    for path in (tmp_path / "hf", f"hf:{tmp_path / 'hf'}"):
        model = xformer.load(path, attn_backend="math")
        assert type(model) is BertForSequenceClassification and model.config.num_classes == 3
        with torch.no_grad():
            logits_close(model(**batch).logits, hf(**hf_inputs(family, batch)).logits)
        assert load_class_names(path) == names
        assert isinstance(load_config(path), BertClassifierConfig) and load_config(path).num_classes == 3


@torch.no_grad()
@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_a_classifier_directory_loads_as_its_backbone_without_heads(family, tmp_path):
    hf = hf_classifier(family, 3)
    hf.save_pretrained(tmp_path / "hf")
    backbone = getattr(FAMILIES[family], f"load_hf_{family}")(str(tmp_path / "hf"), heads=False, attn_backend="math")
    assert type(backbone) is BertModel
    batch = pairs(seed=5)
    ref = (hf.bert if family == "bert" else hf.model)(**hf_inputs(family, batch))
    out = backbone(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(out.last_hidden_state[real], ref.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    if family == "bert":  # BERT's pooler is part of its backbone
        torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=1e-5, rtol=1e-5)


def test_hf_placeholder_labels_name_no_classes(tmp_path):
    hf_classifier("bert", 2).save_pretrained(tmp_path / "hf")  # id2label LABEL_0, LABEL_1
    assert load_class_names(tmp_path / "hf") is None
    transformers.BertForMaskedLM(hf_config("bert", 2)).save_pretrained(tmp_path / "mlm")
    assert load_class_names(tmp_path / "mlm") is None


@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_init_from_an_hf_classifier_keeps_or_replaces_its_head(family, tmp_path):
    hf = hf_classifier(family, 3, **({"classifier_pooling": "mean"} if family == "modernbert" else {}))
    hf.save_pretrained(tmp_path / "hf")
    batch = pairs(seed=3)
    recipe = dict(init=f"hf:{tmp_path / 'hf'}", dropout=0.0, attn_dropout=0.0, attn_backend="math")
    same, cfg = init_from(BertClassifierConfig(**recipe, num_classes=3))
    assert cfg.position == ("rotary" if family == "modernbert" else "absolute")
    assert cfg.classifier_pooling == ("mean" if family == "modernbert" else "cls")
    with torch.no_grad():
        logits_close(same.eval()(**batch).logits, hf(**hf_inputs(family, batch)).logits)
    other, _ = init_from(BertClassifierConfig(**recipe, num_classes=2))  # another task: a fresh head
    assert not torch.equal(other.head.weight[:2], same.head.weight[:2])
    torch.testing.assert_close(other.bert.embeddings.word.weight, same.bert.embeddings.word.weight)


@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_init_from_a_masked_lm_starts_the_head_fresh(family, tmp_path, capsys):
    mlm = transformers.BertForPreTraining if family == "bert" else transformers.ModernBertForMaskedLM
    randomize(mlm(hf_config(family, 2))).save_pretrained(tmp_path / "hf")
    model, cfg = init_from(BertClassifierConfig(init=f"hf:{tmp_path / 'hf'}", num_classes=2, attn_backend="math"))
    fresh = "head" if family == "bert" else "head, transform.dense, transform.norm"
    assert f"starting fresh: {fresh}" in capsys.readouterr().err
    assert model(**pairs()).logits.shape == (4, 2)


# ----------------------------------------------------------------------------- export


def our_classifier(family: str, num_classes: int, **changes) -> BertForSequenceClassification:
    """A randomised classifier of ours in ``family``'s options (BERT: post-LN, absolute; ModernBERT: rotary)."""
    values = dict(vocab_size=len(VOCAB), dim=64, num_heads=4, max_position=64, dropout=0.0, attn_dropout=0.0,
                  attn_backend="math", num_classes=num_classes)
    if family == "bert":
        values.update(depth=2, mlp_ratio=2.0)
    else:
        values.update(depth=4, mlp_ratio=1.5, norm_eps=1e-5, norm_first=True, embed_norm=True, first_block_norm=False,
                      position="rotary", glu=True, bias=False, type_vocab_size=0, local_window=8, global_every=3,
                      final_norm=True, local_rope_theta=10000.0)  # as an import resolves them
    return randomize(BertForSequenceClassification(BertClassifierConfig(**{**values, **changes})))


@torch.no_grad()
@pytest.mark.parametrize("family,num_classes,changes", [
    ("bert", 3, {}), ("bert", 1, {}), ("modernbert", 3, {"classifier_pooling": "mean"}), ("modernbert", 1, {}),
])
def test_export_round_trip(family, num_classes, changes, tmp_path):
    ours = our_classifier(family, num_classes, **changes)
    names = ["a", "b", "c"] if num_classes == 3 else None
    getattr(FAMILIES[family], f"export_{family}")(ours, tmp_path / "hf", class_names=names)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", attn_implementation="eager")
    assert type(hf).__name__ == f"{'ModernBert' if family == 'modernbert' else 'Bert'}ForSequenceClassification"
    assert hf.config.problem_type == ("regression" if num_classes == 1 else "single_label_classification")
    batch = pairs(seed=4)
    logits_close(hf.eval()(**hf_inputs(family, batch)).logits, ours(**batch).logits)
    back = xformer.load(tmp_path / "hf", attn_backend="math")
    assert back.config == ours.config
    for key, value in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def fake_run(tmp_path: Path, model: BertForSequenceClassification, classes: list | None) -> Path:
    """A finished text_classification run: config.yaml, tokenizer/, classes.json and one checkpoint."""
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_1"
    ckpt.mkdir(parents=True)
    cfg = TextClassificationConfig(model=model.config.model_dump(), data={"max_seq_len": 64}, out_dir=str(run))
    save_config(cfg, run / "config.yaml")
    save_config(cfg, ckpt / "config.yaml")
    save_model(model, str(ckpt / "model.safetensors"))
    (run / "tokenizer").mkdir()
    (run / "tokenizer" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizerFast(str(run / "tokenizer" / "vocab.txt")).save_pretrained(run / "tokenizer")
    if classes is not None:
        (run / "classes.json").write_text(json.dumps(classes))
    return run


@torch.no_grad()
@pytest.mark.parametrize("family,classes", [("bert", ["contradiction", "entailment", "neutral"]), ("bert", []),
                                            ("modernbert", ["0", "1", "2"]), ("modernbert", None)])
def test_export_of_a_finetuned_run(family, classes, tmp_path):
    num_classes = 1 if not classes else len(classes)  # a regression run: no class names
    ours = our_classifier(family, num_classes)
    run = fake_run(tmp_path, ours, classes)
    kind = text_classification.TASK.export(run, tmp_path / "out")
    assert kind.endswith("ForSequenceClassification")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out", attn_implementation="eager")
    if classes:
        assert hf.config.id2label == dict(enumerate(classes))
        assert hf.config.label2id == {c: i for i, c in enumerate(classes)}
    else:
        assert hf.config.num_labels == 1 and hf.config.problem_type == "regression"
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    batch = tokenizer(["w1 w2 w3", "w4"], ["w5 w6", "w7 w8 w9 w10"], padding=True, return_tensors="pt")
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if family == "bert":  # a ModernBERT tokenizer gives no token types
        assert batch["token_type_ids"].max() == 1
    logits_close(hf.eval()(**hf_inputs(family, batch)).logits, ours(**batch).logits)
