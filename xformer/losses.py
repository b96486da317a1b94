"""Losses, with their bookkeeping: ignore indices, normalisers across processes, metric counts.

Each loss returns ``(loss, counts)``. ``counts`` are 0-d tensors of sums (never means), so the trainer
can add them over steps and processes without a host sync, and turn them into metrics at log time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def bert_pretraining_loss(
    mlm_logits: torch.Tensor,
    nsp_logits: torch.Tensor,
    labels: torch.Tensor,
    next_sentence_label: torch.Tensor,
    mlm_normalizer: torch.Tensor | int | None = None,
    nsp_normalizer: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked-LM cross-entropy plus next-sentence cross-entropy.

    Args:
        mlm_logits: (B, T, V) over all positions, or (M, V) at the masked positions only (sparse head,
            in the row-major order of ``labels != -100``).
        nsp_logits: (B, 2).
        labels: (B, T) original token ids at masked positions, -100 elsewhere.
        next_sentence_label: (B,) 0 = real continuation, 1 = random sentence.
        mlm_normalizer, nsp_normalizer: what the summed losses are divided by; default the local
            number of masked tokens / sequences. Data-parallel training passes the global counts of the
            whole micro-batch so that every process contributes its exact share.
    """
    targets = labels[labels != IGNORE_INDEX]  # (M,)
    if mlm_logits.dim() == 3:
        mlm_logits = mlm_logits[labels != IGNORE_INDEX]  # (B, T, V) -> (M, V)
    mlm_sum = F.cross_entropy(mlm_logits.float(), targets, reduction="sum")
    nsp_sum = F.cross_entropy(nsp_logits.float(), next_sentence_label, reduction="sum")
    mlm_n = targets.new_tensor(targets.numel()) if mlm_normalizer is None else mlm_normalizer
    nsp_n = next_sentence_label.numel() if nsp_normalizer is None else nsp_normalizer
    loss = mlm_sum / mlm_n + nsp_sum / nsp_n
    with torch.no_grad():
        counts = {
            "mlm_loss_sum": mlm_sum.detach(),
            "mlm_correct": (mlm_logits.argmax(-1) == targets).sum(),
            "mlm_n": targets.new_tensor(targets.numel()),
            "nsp_loss_sum": nsp_sum.detach(),
            "nsp_correct": (nsp_logits.argmax(-1) == next_sentence_label).sum(),
            "nsp_n": next_sentence_label.new_tensor(next_sentence_label.numel()),
        }
    return loss, counts


def bert_pretraining_metrics(counts: dict[str, float]) -> dict[str, float]:
    """Turn summed counts (see :func:`bert_pretraining_loss`) into loss and accuracy metrics."""
    mlm_n, nsp_n = max(counts["mlm_n"], 1), max(counts["nsp_n"], 1)
    mlm_loss, nsp_loss = counts["mlm_loss_sum"] / mlm_n, counts["nsp_loss_sum"] / nsp_n
    return {
        "loss": mlm_loss + nsp_loss,
        "mlm_loss": mlm_loss,
        "mlm_acc": counts["mlm_correct"] / mlm_n,
        "nsp_loss": nsp_loss,
        "nsp_acc": counts["nsp_correct"] / nsp_n,
    }


def classification_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    normalizer: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy against soft targets (label smoothing, mixup, cutmix), with accuracy counts.

    Args:
        logits: (B, K).
        targets: (B, K) probabilities (one-hot when nothing is mixed or smoothed).
        labels: (B,) the original class of each image; accuracy is measured against it.
        normalizer: what the summed loss is divided by; default B (see :func:`bert_pretraining_loss`).
    """
    loss_sum = -(targets * F.log_softmax(logits.float(), dim=-1)).sum()
    loss = loss_sum / (labels.numel() if normalizer is None else normalizer)
    with torch.no_grad():
        counts = {
            "loss_sum": loss_sum.detach(),
            "correct": (logits.argmax(-1) == labels).sum(),
            "n": labels.new_tensor(labels.numel()),
        }
    return loss, counts


def classification_metrics(counts: dict[str, float]) -> dict[str, float]:
    n = max(counts["n"], 1)
    return {"loss": counts["loss_sum"] / n, "acc": counts["correct"] / n}
