"""Losses, with their bookkeeping: ignore indices, normalisers across processes, metric counts.

Each loss returns ``(loss, counts)``. ``counts`` are 0-d tensors of sums (never means), so the trainer
can add them over steps and processes without a host sync, and turn them into metrics at log time.

The counts of targets are named ``n`` or ``<what>_n`` (:func:`no_targets`); a metric over no targets is
NaN (written as null), never 0: a loss of 0 would read as a perfect model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def no_targets(counts: dict[str, float]) -> list[str]:
    """The target counts (``n``, ``mlm_n``, ``nsp_n``, ...) of summed ``counts`` that are 0: the metrics over
    them were not measured."""
    return [k for k, v in counts.items() if (k == "n" or k.endswith("_n")) and v == 0]


def _mean(total: float, n: float) -> float:
    """``total / n``; NaN (not measured) when there were no targets."""
    return total / n if n else math.nan


def bert_pretraining_loss(
    mlm_logits: torch.Tensor,
    nsp_logits: torch.Tensor | None,
    labels: torch.Tensor,
    next_sentence_label: torch.Tensor | None,
    mlm_normalizer: torch.Tensor | int | None = None,
    nsp_normalizer: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked-LM cross-entropy plus next-sentence cross-entropy (MLM alone when ``nsp_logits`` is None).

    Args:
        mlm_logits: (B, T, V) over all positions, or (M, V) at the masked positions only (sparse head,
            in the row-major order of ``labels != -100``).
        nsp_logits: (B, 2), or None for MLM-only pretraining.
        labels: (B, T) original token ids at masked positions, -100 elsewhere.
        next_sentence_label: (B,) 0 = real continuation, 1 = random sentence; None with ``nsp_logits``.
        mlm_normalizer, nsp_normalizer: what the summed losses are divided by; default the local
            number of masked tokens / sequences. Data-parallel training passes the global counts of the
            whole micro-batch so that every process contributes its exact share.
    """
    targets = labels[labels != IGNORE_INDEX]  # (M,)
    if mlm_logits.dim() == 3:
        mlm_logits = mlm_logits[labels != IGNORE_INDEX]  # (B, T, V) -> (M, V)
    mlm_sum = F.cross_entropy(mlm_logits.float(), targets, reduction="sum")
    mlm_n = targets.new_tensor(targets.numel()) if mlm_normalizer is None else mlm_normalizer
    loss = mlm_sum / mlm_n
    with torch.no_grad():
        counts = {
            "mlm_loss_sum": mlm_sum.detach(),
            "mlm_correct": (mlm_logits.argmax(-1) == targets).sum(),
            "mlm_n": targets.new_tensor(targets.numel()),
        }
    if nsp_logits is not None:
        nsp_sum = F.cross_entropy(nsp_logits.float(), next_sentence_label, reduction="sum")
        loss = loss + nsp_sum / (next_sentence_label.numel() if nsp_normalizer is None else nsp_normalizer)
        with torch.no_grad():
            counts["nsp_loss_sum"] = nsp_sum.detach()
            counts["nsp_correct"] = (nsp_logits.argmax(-1) == next_sentence_label).sum()
            counts["nsp_n"] = next_sentence_label.new_tensor(next_sentence_label.numel())
    return loss, counts


def bert_pretraining_metrics(counts: dict[str, float]) -> dict[str, float]:
    """Turn summed counts (see :func:`bert_pretraining_loss`) into loss and accuracy metrics."""
    mlm_n = counts["mlm_n"]
    metrics = {"loss": _mean(counts["mlm_loss_sum"], mlm_n), "mlm_loss": _mean(counts["mlm_loss_sum"], mlm_n),
               "mlm_acc": _mean(counts["mlm_correct"], mlm_n)}
    if "nsp_n" in counts:
        nsp_n = counts["nsp_n"]
        metrics["nsp_loss"] = _mean(counts["nsp_loss_sum"], nsp_n)
        metrics["nsp_acc"] = _mean(counts["nsp_correct"], nsp_n)
        metrics["loss"] += metrics["nsp_loss"]
    return metrics


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
    """Mean loss and accuracy over the summed counts of :func:`classification_loss`."""
    n = counts["n"]
    return {"loss": _mean(counts["loss_sum"], n), "acc": _mean(counts["correct"], n)}


def regression_loss(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    normalizer: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean squared error (HF's loss for ``num_labels=1``), with its counts.

    Args:
        predictions: (B,) the regression head's output (``logits[:, 0]``).
        targets: (B,) float targets.
        normalizer: what the summed loss is divided by; default B (see :func:`bert_pretraining_loss`).
    """
    loss_sum = F.mse_loss(predictions.float(), targets.float(), reduction="sum")
    loss = loss_sum / (targets.numel() if normalizer is None else normalizer)
    with torch.no_grad():
        counts = {"loss_sum": loss_sum.detach(), "n": torch.tensor(targets.numel(), device=targets.device)}
    return loss, counts


def regression_metrics(counts: dict[str, float]) -> dict[str, float]:
    """The mean squared error as ``loss``."""
    return {"loss": _mean(counts["loss_sum"], counts["n"])}


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    normalizer: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CLIP's symmetric cross-entropy: each image against every text of the batch and each text against
    every image, the matching pair being the target; the mean of the two directions.

    Args:
        image_embeds, text_embeds: (B, E) unit-length embeddings of this process's B pairs. Under
            data parallelism both are gathered from every process (:func:`~xformer.distributed.gather_with_grad`,
            gradients flow back to each process's own rows) and this process's targets are offset by
            its rank, so its B rows score against all N pairs.
        logit_scale: the (clamped) inverse temperature.
        normalizer: what the summed losses are divided by; default B (pass N, the global batch, under DDP).
    """
    from xformer.distributed import gather_with_grad

    all_images, offset = gather_with_grad(image_embeds)  # (N, E)
    all_texts, _ = gather_with_grad(text_embeds)  # (N, E)
    logits_per_image = logit_scale * image_embeds.float() @ all_texts.float().t()  # (B, N)
    logits_per_text = logit_scale * text_embeds.float() @ all_images.float().t()  # (B, N)
    targets = torch.arange(image_embeds.size(0), device=image_embeds.device) + offset  # (B,)
    i2t_sum = F.cross_entropy(logits_per_image, targets, reduction="sum")
    t2i_sum = F.cross_entropy(logits_per_text, targets, reduction="sum")
    loss = (i2t_sum + t2i_sum) / (2 * (targets.numel() if normalizer is None else normalizer))
    with torch.no_grad():
        counts = {
            "loss_sum": (i2t_sum + t2i_sum).detach() / 2,
            "i2t_correct": (logits_per_image.argmax(-1) == targets).sum(),
            "t2i_correct": (logits_per_text.argmax(-1) == targets).sum(),
            "n": targets.new_tensor(targets.numel()),
        }
    return loss, counts


def contrastive_metrics(counts: dict[str, float]) -> dict[str, float]:
    """Loss and in-batch top-1 accuracy in both directions (chance: 1 / batch size)."""
    n = counts["n"]
    return {"loss": _mean(counts["loss_sum"], n), "i2t_acc": _mean(counts["i2t_correct"], n),
            "t2i_acc": _mean(counts["t2i_correct"], n)}
