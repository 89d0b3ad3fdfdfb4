"""Fine-tuning recipes: the `transformers` recipe trains exactly as a PyTorch loop with transformers' defaults.

- Slow: all-MiniLM-L6-v2 with a regression head, 100 STS-B steps of 8 at seq 48 with dropout off, in our
  fine-tuning plan and in transformers + `torch.optim.AdamW` + `get_linear_schedule_with_warmup` (the loop
  `transformers.Trainer` runs; `tests/finetune_trajectory.py`), from the same weights on the same batches: the
  losses agree step by step and every parameter's total update agrees to float32 noise. Switching any one
  recipe detail (bias correction, eps, where the decay starts) or the whole recipe to "bert" breaks the match,
  so the test cannot pass by accident.
- Fast: the recipes' settings, overrides and errors; the head initializations.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from bert_jax.finetune import recipes
from bert_jax.finetune.heads import BertForSequenceClassification
from bert_jax.jobs import config as job_config
from bert_jax.models.configs import BertConfig
from tests.conftest import shared_path

STEPS, BATCH, SEQ = 100, 8, 48
LOSS_TOLERANCE = 1e-3  # relative, per step
UPDATE_TOLERANCE = 1e-2  # |our update - theirs| / |their update|, per parameter tensor


def _zero_gradient(name: str) -> bool:
    """Attention key biases: softmax over keys is unchanged by adding the same q.b_k to every score, so their
    gradient is zero in exact arithmetic and Adam turns float32 rounding into their whole update on both sides."""
    return name.endswith("attention.self.key.bias")


@pytest.fixture(scope="module")
def reference(minilm_dir):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests import finetune_trajectory as trajectory

    glue = shared_path("glue")
    shared_path("glue", "STS-B", "train.tsv")
    config = trajectory.stsb_config(minilm_dir, glue, STEPS, BATCH, SEQ)
    initial, ours, arrays = trajectory.train_ours(config)
    theirs = trajectory.train_torch(str(minilm_dir), initial, arrays, config)
    return trajectory, minilm_dir, glue, initial, ours, theirs


def _gaps(trajectory, initial, ours, theirs) -> tuple[float, dict[str, float]]:
    losses = np.abs(ours.losses - theirs.losses) / np.abs(theirs.losses)
    updates = {k: v for k, v in trajectory.update_error(initial, ours, theirs).items() if not _zero_gradient(k)}
    return float(losses.max()), updates


@pytest.mark.slow
def test_transformers_recipe_follows_the_pytorch_trajectory(reference):
    trajectory, _, _, initial, ours, theirs = reference
    assert len(ours.losses) == STEPS and np.all(np.isfinite(theirs.losses))
    assert theirs.losses[-20:].mean() < 0.5 * theirs.losses[:20].mean()  # it learns: the comparison is not idle
    loss_gap, updates = _gaps(trajectory, initial, ours, theirs)
    assert loss_gap < LOSS_TOLERANCE, loss_gap
    worst = max(updates, key=updates.get)
    assert updates[worst] < UPDATE_TOLERANCE, (worst, updates[worst])
    assert len(updates) == len(initial.params) - 6  # every tensor but MiniLM's six key biases is compared


@pytest.mark.slow
@pytest.mark.parametrize(
    "change",
    [{"bias_correction": False}, {"eps": 1e-6}, {"decay_from_warmup_end": False}, {"recipe": "bert"}],
    ids=lambda change: ",".join(f"{k}={v}" for k, v in change.items()),
)
def test_any_other_recipe_detail_leaves_the_pytorch_trajectory(reference, change):
    trajectory, minilm_dir, glue, initial, _, theirs = reference
    config = trajectory.stsb_config(minilm_dir, glue, STEPS, BATCH, SEQ, **change)
    start, ours, _ = trajectory.train_ours(config)
    if change.get("recipe") != "bert":  # the bert recipe's head starts from another initialization
        assert all(np.array_equal(start.params[k], initial.params[k]) for k in initial.params)
    loss_gap, updates = _gaps(trajectory, initial, ours, theirs)
    assert loss_gap > 10 * LOSS_TOLERANCE or np.median(list(updates.values())) > 2 * UPDATE_TOLERANCE


def test_recipes_name_their_settings_and_take_overrides():
    config = ml_collections.ConfigDict(
        {
            "job": "finetune",
            "task": "glue_sst2",
            "learning_rate": 5e-5,
            "warmup_fraction": 0.1,
            "weight_decay": 0.01,
            "optimizer": job_config.optimizer_block(),
            "model": {"size": "tiny"},
        }
    )
    assert config.optimizer.recipe == "transformers"
    hf = job_config.parse(config).optimizer_config(total_steps=105)
    assert (hf.bias_correction, hf.eps, hf.decay_from_warmup_end, hf.warmup_steps) == (True, 1e-8, True, 11)
    config.optimizer.recipe = "bert"
    original = job_config.parse(config).optimizer_config(total_steps=105)
    assert (original.bias_correction, original.eps, original.decay_from_warmup_end) == (False, 1e-6, False)
    assert original.warmup_steps == 10  # the original's int(), Trainer's ceil()
    config.optimizer.eps = 1e-7
    config.optimizer.b2 = 0.98
    changed = job_config.parse(config).optimizer_config(total_steps=105)
    assert (changed.eps, changed.b2, changed.bias_correction) == (1e-7, 0.98, False)
    assert job_config.parse(config).recipe.head_init == "truncated_normal"
    assert recipes.resolve() == recipes.RECIPES[recipes.DEFAULT_RECIPE]


@pytest.mark.parametrize(
    "block, fix",
    [({"recipe": "hf"}, "use one of bert, transformers"), ({"recipe": "bert", "lr": 1.0}, "the section takes recipe")],
)
def test_a_bad_optimizer_block_names_the_fix(block, fix):
    config = {"job": "finetune", "task": "glue_sst2", "model": {"size": "tiny"}, "optimizer": block}
    with pytest.raises(recipes.RecipeError, match=fix):
        job_config.parse(config)


def test_head_inits_truncated_for_bert_and_plain_normal_for_transformers():
    config = BertConfig(
        vocab_size=64, hidden_size=512, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    ids = np.ones((1, 4), np.int32)

    def head(init: str) -> np.ndarray:
        model = BertForSequenceClassification(config, 16, init)
        params = model.init(jax.random.key(0), ids)["params"]
        kernel = params["classifier"]["kernel"]
        return np.asarray(getattr(kernel, "value", kernel)) / config.initializer_range

    truncated, normal = head("truncated_normal"), head("normal")
    assert np.abs(truncated).max() <= 2.0  # cut at two standard deviations
    beyond = np.mean(np.abs(normal) > 2.0)  # 4.55% for a normal distribution; 8,192 draws
    assert 0.035 < beyond < 0.056, beyond
    assert abs(normal.std() - 1.0) < 0.03


@pytest.mark.slow
def test_glue_table_runs_both_sides_and_resumes(tmp_path, minilm_dir):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from bert_jax.harness import glue_table
    from tests.conftest import REPO_ROOT

    glue = shared_path("glue")
    task = glue_table.TableTask("glue_rte", "accuracy", max_seq_length=32, steps=6, batch_size=8)
    said = []
    args = ([task], [0], str(minilm_dir), str(glue), str(REPO_ROOT / "experiments"), str(tmp_path))
    table = glue_table.build_table(*args, say=said.append)
    runs = glue_table.read_runs(str(tmp_path / "runs.jsonl"))
    assert sorted(r["side"] for r in runs) == ["bert_jax", "transformers"] and len(said) == 2
    for run in runs:
        assert 0.0 <= run["metrics"]["accuracy"] <= 1.0 and run["wall_seconds"] > 0
    row = table.splitlines()[2]
    assert row.startswith("| glue_rte (accuracy) | 6 x 8, seq 32, lr 5e-05 |") and row.count("min") == 2
    assert glue_table.build_table(*args, say=said.append) == table and len(said) == 2  # nothing reruns
    with pytest.raises(glue_table.TableError, match="the table's tasks: glue_sst2"):
        glue_table.tasks_named(["glue_qqp"])


def test_glue_table_overrides_set_one_setting_for_every_task_and_rows_keep_to_their_settings(tmp_path):
    from bert_jax.harness import glue_table

    sst2, cola = glue_table.tasks_named(["glue_sst2", "glue_cola"], learning_rate=1e-3, steps=0, batch_size=32)
    assert (sst2.learning_rate, sst2.batch_size, sst2.steps) == (1e-3, 32, glue_table.TABLE_TASKS["glue_sst2"].steps)
    own = glue_table.TABLE_TASKS["glue_cola"]
    assert cola.settings == f"{own.steps} x 32, seq {own.max_seq_length}, lr 0.001"
    with pytest.raises(glue_table.TableError, match="Cannot set metric"):
        glue_table.tasks_named(["glue_sst2"], metric=1)
    with pytest.raises(glue_table.TableError, match="Cannot set steps"):
        glue_table.tasks_named(["glue_sst2"], steps=-5)
    # A run made with other settings (or before settings were recorded) is not counted in, or skipped for, a row.
    old = {"side": "bert_jax", "task": "glue_sst2", "seed": 0, "metrics": {"accuracy": 0.5}, "wall_seconds": 60.0}
    other = {**old, "settings": "1 x 1, seq 8, lr 1", "metrics": {"accuracy": 0.9}}
    mine = {**old, "settings": sst2.settings, "metrics": {"accuracy": 0.7}}
    row = glue_table.render([old, other, mine], [sst2]).splitlines()[2]
    assert "| 0.700 (0.700-0.700) | - |" in row, row
