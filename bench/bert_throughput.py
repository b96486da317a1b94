"""Training-step throughput: xformer's BertForPreTraining vs Hugging Face's (SDPA attention).

One step = forward + MLM/NSP pretraining loss + backward (+ an AdamW step with ``--optim``), on the
same config, batch, sequence length and masked labels (15% of real tokens, -100 elsewhere) for both
models, in train mode (dropout on) from the same seed. After warmup the two models are timed
interleaved (ours, HF, ours, HF, ...) so drift in machine load hits both alike; the median step time
of each is reported, with tokens/s (non-padding tokens) and the time ratio ours/HF (< 1: ours faster).

Ours computes the MLM head only at the masked positions (sparse head); HF projects every position to
the vocabulary. MFU (CUDA only) uses the SAME model-FLOPs count for both: the useful work of a
pretraining step with a sparse head, i.e. encoder over all real tokens + MLM head over masked ones:

    flops/step = 6 * P_enc * tokens + 6 * P_mlm * masked + 12 * depth * dim * sum_i(len_i ** 2)

with P_enc = depth * (4*dim^2 + 2*dim*mlp_dim) (encoder matmul weights), P_mlm = dim^2 + dim*vocab
(MLM transform + decoder), tokens = non-padding tokens, masked = labelled tokens. The attention term
is 12 * depth * seq * dim * tokens when every sequence is full length. MFU = flops / step time / peak
bf16 dense FLOP/s (H100 SXM / H200: 989 TFLOP/s, A100: 312; override with ``--peak-tflops``).

Examples:
    python bench/bert_throughput.py --size tiny --batch 16 --steps 5            # CPU smoke test
    python bench/bert_throughput.py --size base --batch 64 --seq 128 --steps 30  # GPU, bf16, auto backend
    python bench/bert_throughput.py --size base --batch 64 --pad-frac 0.3 --backend flash --compile \
        --optim --json runs/bench_base.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
import transformers

from xformer.config import BertConfig
from xformer.distributed import peak_tflops
from xformer.layers import configure_attention
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
    """Model FLOPs of one training step (see the module docstring); identical for both models."""
    tokens = int(lengths.sum())
    p_enc = depth * (4 * dim * dim + 2 * dim * mlp_dim)
    p_mlm = dim * dim + dim * VOCAB
    attn = 12 * depth * dim * int((lengths.long() ** 2).sum())
    return 6 * p_enc * tokens + 6 * p_mlm * masked + attn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=SIZES, default="tiny")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--steps", type=int, default=20, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--pad-frac", type=float, default=0.0, help="mean fraction of padding per sequence")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--backend", choices=["auto", "math", "sdpa", "flash"], default="auto", help="ours only")
    p.add_argument("--optim", action="store_true", help="include an AdamW step in each training step")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 dense TFLOP/s for MFU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    if not 0 <= args.pad_frac < 1:
        p.error("--pad-frac must be in [0, 1)")

    depth, dim, heads = SIZES[args.size]
    ours_cfg = BertConfig(dim=dim, depth=depth, num_heads=heads, mlp_ratio=4.0, dropout=0.1, attn_dropout=0.1,
                          norm_first=False, attn_backend=args.backend, vocab_size=VOCAB,
                          max_position=max(512, args.seq))
    hf_cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
        intermediate_size=ours_cfg.mlp_dim, hidden_act="gelu", hidden_dropout_prob=ours_cfg.dropout,
        attention_probs_dropout_prob=ours_cfg.attn_dropout, max_position_embeddings=ours_cfg.max_position,
        type_vocab_size=ours_cfg.type_vocab_size, layer_norm_eps=ours_cfg.norm_eps, attn_implementation="sdpa",
    )
    torch.manual_seed(args.seed)
    ours = BertForPreTraining(ours_cfg).to(args.device).train()
    configure_attention(ours, torch.device(args.device), torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    torch.manual_seed(args.seed)
    hf = transformers.BertForPreTraining(hf_cfg).to(args.device).train()
    batch = make_batch(args.batch, args.seq, args.pad_frac, args.device, torch.Generator().manual_seed(args.seed))
    lengths = batch.pop("lengths")
    tokens, masked = int(lengths.sum()), int((batch["labels"] != -100).sum())
    flops = model_flops(depth, dim, ours_cfg.mlp_dim, lengths, masked)

    def ours_loss(m):
        out = m(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], labels=batch["labels"])
        loss = bert_pretraining_loss(out.mlm_logits, out.nsp_logits, batch["labels"], batch["next_sentence_label"])
        return loss[0] if isinstance(loss, tuple) else loss  # the library's returns (loss, counts)

    def hf_loss(m):
        return m(**batch).loss

    runners = {}
    for name, model, loss_fn in (("ours", ours, ours_loss), ("HF", hf, hf_loss)):
        fwd = torch.compile(model) if args.compile else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if args.optim else None

        def step(fwd=fwd, opt=opt, loss_fn=loss_fn, model=model):
            with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
                loss = loss_fn(fwd)
            loss.backward()
            if opt is not None:
                opt.step()
            model.zero_grad(set_to_none=True)
            return loss
        runners[name] = step

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    times = {name: [] for name in runners}
    torch.manual_seed(args.seed)
    for _ in range(args.warmup):
        for step in runners.values():
            step()
    sync()
    for _ in range(args.steps):
        for name, step in runners.items():
            t0 = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - t0)

    peak = peak_tflops(torch.device(args.device), args.peak_tflops)
    results = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        r = {"median_s": med, "tokens_per_s": tokens / med, "model_tflops": flops / med / 1e12}
        if peak:
            r["mfu"] = flops / med / (peak * 1e12)
        results[name] = r
    ratio = results["ours"]["median_s"] / results["HF"]["median_s"]

    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    backend = ours.bert.encoder.backend
    print(f"\nBERT-{args.size} (depth {depth}, dim {dim}, heads {heads}), batch {args.batch} x seq {args.seq}, "
          f"{tokens} real tokens ({masked} masked), {args.dtype}, {device}, ours backend={backend}, "
          f"compile={args.compile}, optim={'AdamW' if args.optim else 'none'}, {args.steps} steps")
    print(f"{'model':<6} {'median s/step':>14} {'tokens/s':>12} {'model TFLOP/s':>14}" + (f" {'MFU':>7}" if peak else ""))
    for name, r in results.items():
        line = f"{name:<6} {r['median_s']:>14.4f} {r['tokens_per_s']:>12,.0f} {r['model_tflops']:>14.3f}"
        print(line + (f" {100 * r['mfu']:>6.1f}%" if peak else ""))
    verdict = f"ours {1 / ratio:.2f}x faster" if ratio <= 1 else f"ours {ratio:.2f}x slower"
    print(f"ratio ours/HF time: {ratio:.2f}x ({verdict})")

    if args.json:
        record = {"args": vars(args), "device": device, "ours_backend": backend, "tokens": tokens,
                  "masked": masked, "model_flops_per_step": flops, "peak_tflops": peak,
                  "results": results, "ratio_ours_over_hf": ratio, "step_times": times}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
