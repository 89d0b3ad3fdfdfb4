"""Object-storage URLs are refused before anything starts, and nothing creates a local directory named `gs:`.

(Serving gs:// itself is the object-storage issue; until then a URL must not silently become a local path.)
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys

import pytest

from bert_jax import paths, pretrain_loop
from bert_jax.finetune import job as finetune_job
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize(
    "value, scheme",
    [("gs://bucket/run", "gs"), ("s3://b/k", "s3"), ("/tmp/run", None), ("runs/a", None), ("", None), (None, None)],
)
def test_url_schemes_are_recognized(value, scheme):
    assert paths.url_scheme(value) == scheme


def test_a_url_anywhere_in_a_comma_separated_list_is_refused():
    with pytest.raises(paths.UnsupportedPathError, match=r"train_files=gs://b/\*\.txt: gs:// paths are not supported"):
        paths.require_local({"train_files": "/local/a.txt, gs://b/*.txt"})
    paths.require_local({"workdir": "/tmp/x", "init_from": ""})  # local paths and empty settings pass


def test_the_jobs_refuse_a_gs_workdir_before_creating_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = runpy.run_path(str(REPO_ROOT / "experiments" / "bert_tiny.py"))["get_config"]()
    with pytest.raises(paths.UnsupportedPathError, match="workdir=gs://bucket/run"):
        pretrain_loop.train_and_evaluate(config, "gs://bucket/run")
    config.data.train_files = "gs://bucket/books/*.txt"
    with pytest.raises(paths.UnsupportedPathError, match=r"data\.train_files=gs://bucket/books"):
        pretrain_loop.train_and_evaluate(config, str(tmp_path / "run"))
    finetune = runpy.run_path(str(REPO_ROOT / "experiments" / "glue_sst2.py"))["get_config"]()
    with pytest.raises(paths.UnsupportedPathError, match="workdir=gs://bucket/sst2"):
        finetune_job.finetune_and_evaluate(finetune, "gs://bucket/sst2")
    assert os.listdir(tmp_path) == []  # no ./gs:/..., no ./run


def test_the_cli_says_it_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bert_jax_tools.export", "--workdir=gs://bucket/run", f"--output_dir={tmp_path}/x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("bert-jax-export: error: workdir=gs://bucket/run")
    assert not (tmp_path / "gs:").exists()
