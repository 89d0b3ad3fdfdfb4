"""The shared step loop: log windows, the input-wait share and its warning, evals and saves at the right steps.

A real jitted step on a tiny state; the input is a generator whose delay per batch is known, so the share of
wall time the loop waited for it is known too (the step itself takes well under a millisecond).
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.training import step_loop, train
from bert_jax.training.metrics_log import MetricsLog


class RecordingCheckpointer:
    """The checkpointer's interface, recording which steps were saved."""

    def __init__(self, every: int) -> None:
        self.every, self.saved = every, []

    def should_save(self, step: int) -> bool:
        return step % self.every == 0

    def save(self, step, params, opt_state, meta, tokenizer_files, force=False) -> None:
        self.saved.append((step, dict(meta)))

    def wait_until_finished(self) -> None:
        pass


@jax.jit
def _step(state, batch):
    params = state.params - 0.1 * batch["x"].mean()
    return state.replace(step=state.step + 1, params=params), {"loss": jnp.mean(params)}


def _batches(delay: float, total: int):
    arrays = [{"x": jnp.full((4,), float(i))} for i in range(total)]  # made before the loop starts
    for i, batch in enumerate(arrays):
        time.sleep(delay)
        yield step_loop.LoopBatch(batch, tokens=4, checkpoint_meta={"data_state": i})


def _run(tmp_path, delay: float, step_seconds: float = 0.0, total: int = 12, hint: str = ""):
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=jnp.zeros(()), opt_state=())
    jax.block_until_ready(_step(state, {"x": jnp.zeros((4,))}))  # compiled before the loop's clock starts

    def slow_step(state, batch):
        time.sleep(step_seconds)  # a step that keeps the host busy this long (an accelerator's step)
        return _step(state, batch)

    evals = []
    log = MetricsLog(str(tmp_path), tensorboard=False)
    checkpointer = RecordingCheckpointer(every=5)
    result = step_loop.run(
        state,
        slow_step,
        _batches(delay, total),
        step_loop.LoopSettings(total_steps=total, log_every_steps=4, eval_every_steps=6),
        start_step=0,
        checkpointer=checkpointer,
        log=log,
        hooks=step_loop.LoopHooks(
            evaluate=lambda s, step: evals.append(step) or {"loss": 0.0},
            rates=lambda seconds, steps, tokens: {"tokens_per_sec": tokens / seconds},
            checkpoint_meta={"job": "test"},
            input_hint=hint,
            warn_input_wait=True,  # as on an accelerator (a CPU backend does not warn)
        ),
    )
    log.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return result, evals, checkpointer.saved, [r for r in records if "loss" in r and "input_wait" in r]


def test_a_starved_loop_reports_its_input_wait_and_warns(tmp_path, capsys):
    result, evals, saved, records = _run(tmp_path, delay=0.05, hint="add input workers")
    out = capsys.readouterr().out
    assert result.step == 12 and evals == [6, 12]
    assert [step for step, _ in saved] == [5, 10, 12]  # every 5 steps and the last
    assert saved[0][1] == {"job": "test", "data_state": 4}  # the job's metadata and the batch's own
    assert [r["step"] for r in records] == [4, 8, 12]
    # 50 ms per batch against a sub-millisecond step: nearly all of each window is waiting (the first batch
    # of the run is not counted: it waits for the input to start; the first window also holds the loop's
    # start-up, which on a loaded 2-core host took 0.1 s of its 0.25 s, so it gets a looser bound)
    assert records[0]["input_wait"] > 0.3 and all(r["input_wait"] > 0.8 for r in records[1:]), records
    assert 0.9 < records[-1]["input_wait"] <= 1.0
    assert "input wait" in out and out.count("Warning: the last 4 steps waited") == 3
    assert "the input is slower than the accelerator; add input workers" in out
    np.testing.assert_allclose(float(result.state.params), -0.1 * sum(range(12)), rtol=1e-6)


def test_a_fed_loop_does_not_warn(tmp_path, capsys):
    # 0.1 s steps: the 5% bound is then 20 ms of waiting per 4-step window, which a loaded 2-core host's
    # scheduling hiccups do not reach (with 0.02 s steps, 4 ms of them did once: 0.059 in one window)
    _, _, _, records = _run(tmp_path, delay=0.0, step_seconds=0.1)
    out = capsys.readouterr().out
    assert all(r["input_wait"] < step_loop.INPUT_WAIT_WARNING for r in records), records
    assert "Warning" not in out
