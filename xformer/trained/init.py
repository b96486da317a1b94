"""Starting a model from ``init``: a run directory, a checkpoint or ``hf:<dir or hub id>``, for every family.

One rule for all of them: the architecture comes from the checkpoint, the recipe's
:attr:`~xformer.config.Section.runtime_keys` (dropout, attention backend, number of classes, pooling,
...) come from the recipe, at any depth (both CLIP towers too); the checkpoint's backbone weights all
load, and a head that the checkpoint lacks or that has another shape (another number of classes)
starts fresh. Nothing is changed in the caller's config: the resolved one is returned.
"""

from __future__ import annotations

import sys

from torch import nn

from xformer.config import Section
from xformer.errors import XformerError
from xformer.models.registry import architecture, build_model


def load_source(init: str, cfg: Section, key: str = "model.init") -> nn.Module:
    """The model ``init`` names, checked to be of the architecture that ``cfg`` starts from (its
    ``starts_from``: a CLIP text tower starts from a BERT)."""
    from xformer.trained.loading import load

    starts_from = getattr(type(cfg), "starts_from", None)
    if starts_from is None:
        raise XformerError(f"{key}={init}: a {type(cfg).__name__} cannot start from a checkpoint")
    family = architecture(starts_from)
    source = load(init)
    if not isinstance(getattr(source, "config", None), family.config):
        raise XformerError(f"{key}={init}: a {type(source).__name__}, not a {family.title} checkpoint")
    return source


def check_sequence_length(cfg: Section, max_seq_len: int) -> None:
    """Sequences of ``data.max_seq_len`` must fit the position table of the model that ``cfg.init`` names
    (read from its config alone, before any data is prepared; a fresh model is checked by its run config)."""
    from xformer.trained.loading import load_config

    if getattr(cfg, "init", None) is None:
        return
    max_position = getattr(load_config(cfg.init), "max_position", None)
    if max_position is not None and max_seq_len > max_position:
        raise XformerError(f"data.max_seq_len={max_seq_len} is longer than the {max_position} positions of "
                           f"model.init={cfg.init}; lower data.max_seq_len")


def merge_config(recipe: Section, source: Section) -> Section:
    """``recipe``'s class with the architecture of ``source``: every key ``source`` has, except the
    recipe's runtime keys; nested sections (CLIP towers) merge the same way."""
    values = {}
    for name in type(recipe).model_fields:
        mine, theirs = getattr(recipe, name), getattr(source, name, None)
        if name == "arch" or name in recipe.runtime_keys or name not in type(source).model_fields:
            values[name] = mine
        elif isinstance(mine, Section) and isinstance(theirs, Section):
            values[name] = merge_config(mine, theirs)
        else:
            values[name] = theirs
    return type(recipe)(**values)


def backbone_prefix(model: nn.Module) -> str:
    """Where a model keeps its backbone, as its class declares (``bert.``, ``vit.``); a model that declares
    none is its own backbone."""
    return getattr(type(model), "backbone_prefix", "")


def load_weights(target: nn.Module, source: nn.Module, what: str) -> list[str]:
    """Load ``source``'s weights into ``target``, matching backbones whatever their prefix (a BERT's
    ``bert.encoder`` feeds a text tower's ``encoder``). Every weight of ``target`` must come from
    ``source`` with its shape, except in its heads (``head_prefixes``: they start fresh); returns the
    head modules left fresh."""
    tp, sp = backbone_prefix(target), backbone_prefix(source)
    src = source.state_dict()
    backbone = {k[len(sp):]: v for k, v in src.items() if k.startswith(sp)}
    outside = {k: v for k, v in src.items() if not k.startswith(sp)} if sp else {}
    heads = tuple(getattr(target, "head_prefixes", ()))
    loaded, fresh, misfit, seen = {}, [], [], set()
    for k, v in target.state_dict().items():
        if v.data_ptr() in seen:  # a tied weight (the MLM decoder): loaded under its first name
            continue
        seen.add(v.data_ptr())
        found = backbone.get(k[len(tp):]) if k.startswith(tp) else outside.get(k)
        if found is not None and found.shape == v.shape:
            loaded[k] = found
        elif heads and k.startswith(heads):
            fresh.append(k)
        else:
            misfit.append(k if found is None else f"{k} {tuple(found.shape)} vs {tuple(v.shape)}")
    if misfit:
        raise XformerError(f"{what}: a {type(source).__name__} does not fit this {type(target).__name__} "
                           f"(missing or of another shape: {', '.join(misfit[:3])})")
    # a backbone weight the target has no place for would be dropped: the model would not be the source's
    taken = {k[len(tp):] for k in loaded if k.startswith(tp)}
    source_heads = tuple(p[len(sp):] for p in getattr(source, "head_prefixes", ()) if p.startswith(sp))
    dropped = [k for k in backbone if k not in taken and not (source_heads and k.startswith(source_heads))]
    if dropped:
        raise XformerError(f"{what}: this {type(target).__name__} has no place for {', '.join(dropped[:3])} of the "
                           f"{type(source).__name__}; its options differ (e.g. model.embed_norm)")
    target.load_state_dict(loaded, strict=False)
    return sorted({k.rsplit(".", 1)[0] for k in fresh})


def check_sizes(recipe: Section, source: Section, key: str = "model") -> None:
    """An init that takes the encoder out of a run of another architecture (an MAE's into a ViT classifier)
    builds the model the recipe describes: every architecture key the recipe sets (dim, depth, num_heads,
    patch_size, image_size, ...) must be the source's; XformerError naming both values otherwise. (An init
    from the config's own family takes its architecture from the checkpoint, whatever the recipe says.)"""
    own = (getattr(recipe, "arch", None), getattr(type(recipe), "starts_from", None))
    if getattr(source, "arch", None) in own:
        return
    keys = [k for k in type(recipe).model_fields if k in recipe.model_fields_set - recipe.runtime_keys - {"arch"}]
    differ = [k for k in keys if k in type(source).model_fields and getattr(recipe, k) != getattr(source, k)]
    if differ:
        both = "; ".join(f"{key}.{k}: the run's {getattr(source, k)}, the recipe's {getattr(recipe, k)}"
                         for k in differ)
        raise XformerError(f"{key}.init={recipe.init}: the {architecture(source.arch).title} run's encoder has "
                           f"another size ({both}); set the recipe's to the run's or leave them out")


def left_behind(target: nn.Module, source: nn.Module) -> list[str]:
    """The heads of ``source`` (its ``head_prefixes``: an MAE's decoder, a BERT's MLM head) that ``target``
    has no place for, with their tensor counts."""
    sp, tp = backbone_prefix(source), backbone_prefix(target)
    names = {k[len(tp):] if k.startswith(tp) else k for k in target.state_dict()}
    left = {}
    for k in source.state_dict():
        head = next((h for h in getattr(source, "head_prefixes", ()) if k.startswith(h)), None)
        if head is not None and (k[len(sp):] if sp and k.startswith(sp) else k) not in names:
            left[head.rstrip(".")] = left.get(head.rstrip("."), 0) + 1
    return [f"{head} ({n} tensors)" for head, n in left.items()]


def init_from(cfg: Section, key: str = "model") -> tuple[nn.Module, Section]:
    """The model for ``cfg`` and its resolved config: fresh, or from ``cfg.init`` (see the module doc).
    A config that starts from no architecture (``arch: hf_image``) loads its own checkpoint."""
    if getattr(cfg, "init", None) is None or getattr(type(cfg), "starts_from", None) is None:
        return build_model(cfg), cfg
    source = load_source(cfg.init, cfg, f"{key}.init")
    check_sizes(cfg, source.config, key)
    resolved = merge_config(cfg, source.config)
    model = build_model(resolved)
    fresh = load_weights(model, source, f"{key}.init={cfg.init}")
    if fresh:
        print(f"[init] {cfg.init}: not in the checkpoint (or another shape), starting fresh: {', '.join(fresh)}",
              file=sys.stderr)
    if left := left_behind(model, source):
        print(f"[init] {cfg.init}: left behind, a {type(model).__name__} has no place for them: {', '.join(left)}",
              file=sys.stderr)
    return model.train(), resolved
