"""One entry point that runs any task's config: ``run(cfg)`` picks the task's training function."""

from __future__ import annotations

from xformer.config import RunConfig


def run(cfg: RunConfig, resume: bool = False) -> dict:
    """Train ``cfg`` (whatever its task) into ``cfg.out_dir``; returns the final train and validation metrics."""
    if cfg.task == "image_classification":
        from xformer.classify import train_classifier

        return train_classifier(cfg, resume=resume)
    if cfg.task == "contrastive":
        from xformer.contrastive import train_clip

        return train_clip(cfg, resume=resume)
    if cfg.task == "text_classification":
        from xformer.text_classify import train_text_classifier

        return train_text_classifier(cfg, resume=resume)
    from xformer.pretrain import pretrain

    return pretrain(cfg, resume=resume)


# The validation metric that ranks runs of each task (higher is better).
PRIMARY_METRIC = {
    "image_classification": "acc",
    "text_classification": "acc",
    "bert_pretraining": "mlm_acc",
    "contrastive": "t2i_R@10",
}
