"""The jobs' persistent compilation cache: where it goes, that it restores JAX's setting, that it answers.

The end-to-end check (a preempted pretraining job restarts and loads its train step from `<workdir>/jax_cache`,
then continues bitwise) is in test_checkpoint.py's SIGTERM test.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.training import compile_cache


@pytest.mark.parametrize(
    "setting, jax_setting, expected",
    [
        ("", None, os.path.join("wd", "jax_cache")),  # the default: in the workdir
        ("", "/elsewhere", "/elsewhere"),  # JAX_COMPILATION_CACHE_DIR set by the user wins over the default
        ("off", "/elsewhere", None),  # "off" turns off even the user's JAX setting
        (" OFF ", None, None),
        ("/mine", "/elsewhere", "/mine"),  # an explicit directory wins over everything
        ("gs://bucket/cache", None, "gs://bucket/cache"),
    ],
)
def test_directory_follows_the_documented_precedence(setting, jax_setting, expected):
    assert compile_cache.resolve_directory(setting, "wd", jax_setting) == expected


def test_a_non_string_setting_is_a_one_line_config_error():
    with pytest.raises(compile_cache.CompileCacheConfigError, match="compilation_cache_dir must be a string"):
        compile_cache.resolve_directory(None, "wd", None)  # type: ignore[arg-type]


@pytest.fixture
def jax_cache_setting():
    """Caches every program however fast it compiles (JAX's threshold is 1 s) during the test; afterwards JAX's
    cache directory and threshold are as they were."""
    before = jax.config.jax_compilation_cache_dir
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield before
    jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)
    jax.config.update("jax_compilation_cache_dir", before)
    compile_cache.compilation_cache.reset_cache()


def _compile_something(seed: int) -> float:
    """A fresh jitted function (the in-memory caches cannot know it), compiled and run once."""

    @jax.jit
    def draws(key):
        return jnp.sum(jax.random.normal(key, (64, 48)) ** 2)

    return float(draws(jax.random.key(seed)))


def test_job_cache_writes_then_answers_and_restores_the_previous_setting(tmp_path, jax_cache_setting):
    def run_job(workdir):
        with compile_cache.job_cache("", str(workdir)) as directory:
            assert directory == str(workdir / "jax_cache") and os.path.isdir(directory)
            assert jax.config.jax_compilation_cache_dir == directory
            start = compile_cache.counts()
            value = _compile_something(0)
            counts = compile_cache.since(start)
        assert jax.config.jax_compilation_cache_dir == jax_cache_setting  # left as it was
        assert any(name.startswith("jit_draws") for name in os.listdir(directory))
        return value, counts

    first, cold = run_job(tmp_path / "a")
    assert cold.requests >= 1 and cold.hits == 0
    other, elsewhere = run_job(tmp_path / "b")  # another job's directory: nothing to load
    assert elsewhere.hits == 0
    again, warm = run_job(tmp_path / "a")  # a restart in the first workdir loads the program
    assert warm.hits >= 1, warm
    assert np.float32(again) == np.float32(first) == np.float32(other)
    assert "1 of 1 programs loaded from it" in compile_cache.describe("d", compile_cache.CacheCounts(1, 1))


def test_off_writes_nothing(tmp_path, jax_cache_setting):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users_cache"))
    with compile_cache.job_cache("off", str(tmp_path / "job")) as directory:
        assert directory is None and jax.config.jax_compilation_cache_dir is None
        start = compile_cache.counts()
        _compile_something(1)
        assert compile_cache.since(start).hits == 0
    assert not (tmp_path / "job" / "jax_cache").exists() and not (tmp_path / "users_cache").exists()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "users_cache")
    assert compile_cache.describe(None, compile_cache.CacheCounts()) == "compilation cache off"
