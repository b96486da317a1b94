from pathlib import Path

import pytest
import yaml

from xformer.config import RunConfig
from xformer.commands.recipe import load_recipe, parse_override
from xformer.errors import XformerError


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_defaults_then_recipe_then_overrides(tmp_path):
    path = write(tmp_path, "model:\n  dim: 256\ntrain:\n  lr: 0.001\n")
    cfg = load_recipe(path, ["train.lr=3e-4", "model.depth=3", "data.source=[a.parquet, b.parquet]"])
    assert (cfg.model.dim, cfg.model.depth, cfg.model.num_heads) == (256, 3, 12)
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.data.source == ["a.parquet", "b.parquet"]
    assert cfg.out_dir == "runs/r"


def test_unknown_key_names_key_and_close_matches(tmp_path):
    path = write(tmp_path, "train:\n  max_step: 10\n")
    with pytest.raises(XformerError, match=r"unknown key 'train.max_step'; did you mean train.max_steps"):
        load_recipe(path)
    with pytest.raises(XformerError, match=r"unknown key 'model.num_head'.*model.num_heads"):
        load_recipe(None, ["model.num_head=4"])
    with pytest.raises(XformerError, match=r"unknown key 'trian'.*train"):
        load_recipe(None, ["trian.lr=1"])


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: many\n")
    with pytest.raises(XformerError, match=r"train.batch_size: .*'many'"):
        load_recipe(path)
    with pytest.raises(XformerError, match=r"model.attn_backend"):
        load_recipe(None, ["model.attn_backend=cuda"])


def test_bad_files_and_syntax(tmp_path):
    with pytest.raises(XformerError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(XformerError, match="not valid YAML"):
        load_recipe(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(XformerError, match="key=value"):
        parse_override("train.lr")


def test_every_recipe_is_valid():
    from pathlib import Path

    from xformer.commands.glue import GLUE_TASKS, merged, read_protocol
    from xformer.config import load_yaml
    from xformer.tasks import parse_config

    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        if "glue" not in load_yaml(path):
            assert isinstance(load_recipe(path), RunConfig)
            continue
        base, per_task = read_protocol(path)  # the GLUE protocol: a run config once a task's source is set
        for task in GLUE_TASKS:
            tree = merged(merged(base, {"data": {"source": f"glue/{task}"}}), per_task.get(task, {}))
            assert isinstance(parse_config(tree, f"{path} ({task})"), RunConfig)


RUN_CONFIGS = Path(__file__).parent / "golden" / "run_configs"  # saved by runs of each task at 78968a8


def saved_keys(new, old):
    """``new`` (a config read back) cut to the keys of ``old`` (the saved one), nested sections too: what a
    saved key reads back as; a key no longer there reads as "<missing>"."""
    if isinstance(new, dict) and isinstance(old, dict):
        return {k: saved_keys(new.get(k, "<missing>"), v) for k, v in old.items()}
    return new


@pytest.mark.parametrize("path", sorted(RUN_CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_configs_saved_before_the_registry_still_load(path):
    """Every key of a config.yaml written before the model registry (and before model and data sections
    moved out of xformer.config) is read back as it was, and its model section builds its model."""
    from xformer.config import config_text, load_yaml
    from xformer.models.registry import build_model, model_config
    from xformer.tasks import parse_config

    tree = load_yaml(path, "run config")
    cfg = parse_config(tree, str(path))
    assert saved_keys(yaml.safe_load(config_text(cfg)), tree) == tree  # keys added since have their defaults
    assert build_model(model_config(tree["model"], str(path))) is not None
