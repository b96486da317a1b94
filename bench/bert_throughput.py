"""Training-step throughput: xformer's BertForPreTraining vs Hugging Face's (SDPA attention).

One step = forward + MLM/NSP pretraining loss + backward (+ an AdamW step with ``--optim``), on the
same config, batch, sequence length and masked labels (15% of real tokens, -100 elsewhere) for all
models, in train mode (dropout on) from the same seed. Ours runs once per ``--backend`` (a comma list,
e.g. ``sdpa,varlen``), HF once; for each ``--pad-frac`` the models are warmed up, then timed
interleaved (HF, ours[sdpa], ours[varlen], HF, ...) so drift in machine load hits all alike; the median
step time of each is reported, with tokens/s (non-padding tokens) and the ratio of ours to HF (> 1: ours
faster). A backend that cannot be built or run here is reported with its one-line reason and skipped.

``--compile`` compiles each transformer block of every model (ours and HF alike), regionally, as the
trainer's ``train.compile`` does: one compiled graph shared by the blocks, so compiling takes seconds.

Ours computes the MLM head only at the masked positions (sparse head); HF projects every position to
the vocabulary. MFU (CUDA only) uses the SAME model-FLOPs count for every model: the useful work of a
pretraining step with a sparse head, i.e. encoder over all real tokens + MLM head over masked ones:

    flops/step = 6 * P_enc * tokens + 6 * P_mlm * masked + 12 * depth * dim * sum_i(len_i ** 2)

with P_enc = depth * (4*dim^2 + 2*dim*mlp_dim) (encoder matmul weights), P_mlm = dim^2 + dim*vocab
(MLM transform + decoder), tokens = non-padding tokens, masked = labelled tokens. The attention term
is 12 * depth * seq * dim * tokens when every sequence is full length. MFU = flops / step time / peak
bf16 dense FLOP/s (H100 SXM / H200: 989 TFLOP/s, A100: 312; override with ``--peak-tflops``).
``mfu_trainer`` is the trainer's logged figure for comparison: 6 * (our parameters outside embedding
tables) * tokens/s / peak, attention scores left out.

Examples:
    python bench/bert_throughput.py --size tiny --batch 16 --steps 5            # CPU smoke test
    python bench/bert_throughput.py --size base --batch 64 --seq 128 --steps 30  # GPU, bf16, auto backend
    python bench/bert_throughput.py --size base --batch 64 --pad-frac 0 0.3 --backend sdpa,varlen \
        --attn-dropout 0 --compile --optim --json runs/bench_base.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
import transformers

from xformer.models.bert import BertConfig
from xformer.distributed import peak_tflops
from xformer.layers import blocks_of, configure_attention
from xformer.layers.attention import BACKENDS
from xformer.models.bert import BertForPreTraining

SIZES = {  # depth, dim, heads
    "tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "base": (12, 768, 12),
}
VOCAB = 30522

try:  # the library's loss (what the trainer runs), when it exists; otherwise the same thing inline
    from xformer.losses import bert_pretraining_loss
except ImportError:
    def bert_pretraining_loss(mlm_logits, nsp_logits, labels, next_sentence_label):
        mlm = F.cross_entropy(mlm_logits.float(), labels[labels != -100])
        return mlm + F.cross_entropy(nsp_logits.float(), next_sentence_label)


def make_batch(batch: int, seq: int, pad_frac: float, device: str, gen: torch.Generator) -> dict:
    """Random token ids, padding (mean fraction ``pad_frac``), two segments, 15% masked labels, NSP labels."""
    if pad_frac > 0:  # lengths uniform around seq * (1 - pad_frac)
        mean = seq * (1 - pad_frac)
        half = min(seq - mean, mean - 2)
        lengths = (mean - half + 2 * half * torch.rand(batch, generator=gen)).round().long().clamp(2, seq)
    else:
        lengths = torch.full((batch,), seq)
    pos = torch.arange(seq)[None, :]
    attention_mask = (pos < lengths[:, None]).long()
    input_ids = torch.randint(1000, VOCAB, (batch, seq), generator=gen) * attention_mask
    token_type_ids = ((pos >= (lengths[:, None] // 2)) & attention_mask.bool()).long()
    masked = (torch.rand(batch, seq, generator=gen) < 0.15) & attention_mask.bool()
    masked[:, 1] |= ~masked.any(1)  # at least one masked token per sequence
    labels = torch.where(masked, torch.randint(1000, VOCAB, (batch, seq), generator=gen), -100)
    nsp = torch.randint(0, 2, (batch,), generator=gen)
    out = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
               labels=labels, next_sentence_label=nsp)
    out = {k: v.to(device) for k, v in out.items()}
    out["lengths"] = lengths
    return out


def model_flops(depth: int, dim: int, mlp_dim: int, lengths: torch.Tensor, masked: int) -> float:
    """Model FLOPs of one training step (see the module docstring); identical for every model."""
    tokens = int(lengths.sum())
    p_enc = depth * (4 * dim * dim + 2 * dim * mlp_dim)
    p_mlm = dim * dim + dim * VOCAB
    attn = 12 * depth * dim * int((lengths.long() ** 2).sum())
    return 6 * p_enc * tokens + 6 * p_mlm * masked + attn


def matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters outside embedding tables: the trainer's MFU count (``xformer.train.metrics``)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=SIZES, default="tiny")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--steps", type=int, default=20, help="timed steps per model and padding fraction")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--pad-frac", type=float, nargs="+", default=[0.0],
                   help="mean fraction of padding per sequence; several values run one after another")
    p.add_argument("--compile", action="store_true", help="torch.compile each block of every model (regional)")
    p.add_argument("--backend", default="auto",
                   help=f"ours, a comma list of {', '.join(BACKENDS)} (each timed as its own model)")
    p.add_argument("--attn-dropout", type=float, default=0.1,
                   help="attention-probability dropout of every model (varlen needs 0)")
    p.add_argument("--optim", action="store_true", help="include an AdamW step in each training step")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 dense TFLOP/s for MFU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--dry-run", action="store_true", help="check the arguments and exit without building models")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    args.backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    if not args.backends or (unknown := [b for b in args.backends if b not in BACKENDS]):
        p.error(f"--backend {args.backend!r}: choose from {', '.join(BACKENDS)} (a comma list)")
    if len(set(args.backends)) != len(args.backends):
        p.error(f"--backend {args.backend!r} names a backend twice")
    if not all(0 <= f < 1 for f in args.pad_frac):
        p.error("--pad-frac must be in [0, 1)")
    if not 0 <= args.attn_dropout < 1:
        p.error("--attn-dropout must be in [0, 1)")
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.seq < 8:
        p.error("--steps >= 1, --warmup >= 0, --batch >= 1 and --seq >= 8")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.dry_run:
        print(f"dry run: BERT-{args.size}, batch {args.batch} x seq {args.seq}, pad-frac {args.pad_frac}, "
              f"backends {args.backends}, compile={args.compile}, {args.device} {args.dtype}: arguments OK")
        return

    device, bf16 = torch.device(args.device), args.dtype == "bf16"
    depth, dim, heads = SIZES[args.size]

    def ours_config(backend: str) -> BertConfig:
        return BertConfig(dim=dim, depth=depth, num_heads=heads, mlp_ratio=4.0, dropout=0.1,
                          attn_dropout=args.attn_dropout, norm_first=False, attn_backend=backend,
                          vocab_size=VOCAB, max_position=max(512, args.seq))

    cfg0 = ours_config("math")
    hf_cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
        intermediate_size=cfg0.mlp_dim, hidden_act="gelu", hidden_dropout_prob=cfg0.dropout,
        attention_probs_dropout_prob=cfg0.attn_dropout, max_position_embeddings=cfg0.max_position,
        type_vocab_size=cfg0.type_vocab_size, layer_norm_eps=cfg0.norm_eps, attn_implementation="sdpa",
    )

    # name -> (model, loss function, resolved backend); errors: name -> one-line reason
    models: dict[str, tuple[torch.nn.Module, object, str]] = {}
    errors: dict[str, str] = {}
    torch.manual_seed(args.seed)
    hf = transformers.BertForPreTraining(hf_cfg).to(device).train()
    if args.compile:
        for layer in hf.bert.encoder.layer:
            layer.compile()
    models["HF"] = (hf, lambda m, b: m(**b).loss, "hf-sdpa")

    def ours_loss(m, b):
        out = m(b["input_ids"], b["attention_mask"], b["token_type_ids"], labels=b["labels"])
        loss = bert_pretraining_loss(out.mlm_logits, out.nsp_logits, b["labels"], b["next_sentence_label"])
        return loss[0] if isinstance(loss, tuple) else loss  # the library's returns (loss, counts)

    for backend in args.backends:
        try:
            torch.manual_seed(args.seed)  # the same weights for every backend
            ours = BertForPreTraining(ours_config(backend)).to(device).train()
            configure_attention(ours, device, torch.bfloat16 if bf16 else torch.float32)
            if args.compile:
                for block in blocks_of(ours):
                    block.compile()
            models[backend] = (ours, ours_loss, ours.bert.encoder.backend)
        except Exception as err:  # a backend that cannot run here: say why, time the others
            errors[backend] = one_line(err)
            print(f"ours[{backend}]: skipped: {errors[backend]}")
    ours_names = [name for name in models if name != "HF"]
    ours_params = matmul_parameters(models[ours_names[0]][0]) if ours_names else None

    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=device.type == "cuda")
                  for name, (m, _, _) in models.items()} if args.optim else {}

    def step(name: str, batch: dict) -> None:
        model, loss_fn, _ = models[name]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, batch)
        loss.backward()
        if name in optimizers:
            optimizers[name].step()
        model.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    peak = peak_tflops(device, args.peak_tflops)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    groups = []
    for pad_frac in args.pad_frac:
        batch = make_batch(args.batch, args.seq, pad_frac, args.device, torch.Generator().manual_seed(args.seed))
        lengths = batch.pop("lengths")
        tokens, masked = int(lengths.sum()), int((batch["labels"] != -100).sum())
        flops = model_flops(depth, dim, cfg0.mlp_dim, lengths, masked)
        group_errors = dict(errors)
        live = []
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        for name in models:
            try:  # warmup (and compilation) one model at a time, so a failure names its model
                for _ in range(args.warmup):
                    step(name, batch)
                sync()
                live.append(name)
            except Exception as err:
                group_errors[name] = one_line(err)
                print(f"{name} at pad-frac {pad_frac}: failed in warmup: {group_errors[name]}")
        warmup_s = time.perf_counter() - t0
        times = {name: [] for name in live}
        for _ in range(args.steps):
            for name in live:
                t0 = time.perf_counter()
                step(name, batch)
                sync()
                times[name].append(time.perf_counter() - t0)

        results = {}
        for name, ts in times.items():
            med = statistics.median(ts)
            r = {"backend": models[name][2], "median_s": med, "tokens_per_s": tokens / med,
                 "model_tflops": flops / med / 1e12, "step_times": ts}
            if peak:
                r["mfu"] = flops / med / (peak * 1e12)
                if ours_params:
                    r["mfu_trainer"] = 6 * ours_params * tokens / med / (peak * 1e12)
            results[name] = r
        if "HF" in results:
            for name, r in results.items():
                r["speedup_vs_hf"] = results["HF"]["median_s"] / r["median_s"]
        groups.append({"pad_frac": pad_frac, "tokens": tokens, "masked": masked, "model_flops_per_step": flops,
                       "warmup_s": warmup_s, "results": results, "errors": group_errors})

        print(f"\nBERT-{args.size} (depth {depth}, dim {dim}, heads {heads}), batch {args.batch} x seq {args.seq}, "
              f"pad-frac {pad_frac}: {tokens} real tokens ({masked} masked), {args.dtype}, {device_name}, "
              f"compile={args.compile}, optim={'AdamW' if args.optim else 'none'}, attn dropout {args.attn_dropout}, "
              f"{args.steps} steps (warmup {warmup_s:.1f} s)")
        print(f"{'model':<14} {'median s/step':>14} {'tokens/s':>12} {'model TFLOP/s':>14}"
              + (f" {'MFU':>7}" if peak else "") + f" {'x HF':>6}")
        for name, r in results.items():
            line = f"{name + '[' + r['backend'] + ']':<14} {r['median_s']:>14.4f} {r['tokens_per_s']:>12,.0f} " \
                   f"{r['model_tflops']:>14.3f}" + (f" {100 * r['mfu']:>6.1f}%" if peak else "")
            print(line + (f" {r['speedup_vs_hf']:>5.2f}x" if "speedup_vs_hf" in r else ""))
        for name, reason in group_errors.items():
            print(f"{name}: not timed: {reason}")

    if args.json:
        record = {"args": {k: v for k, v in vars(args).items()}, "device": device_name, "torch": torch.__version__,
                  "transformers": transformers.__version__, "peak_tflops": peak,
                  "ours_matmul_parameters": ours_params, "groups": groups}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
