"""Path checks before anything starts: schemes that cannot be served end in one line, and nothing creates a
local directory named `gs:` or `s3:`."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys

import pytest

from bert_jax import storage
from bert_jax.jobs import config as job_config
from bert_jax.jobs import finetuning, pretraining
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize(
    "value, scheme",
    [("gs://bucket/run", "gs"), ("s3://b/k", "s3"), ("/tmp/run", None), ("runs/a", None), ("", None), (None, None)],
)
def test_url_schemes_are_recognized(value, scheme):
    assert storage.url_scheme(value) == scheme


def test_an_unserved_scheme_anywhere_in_a_comma_separated_list_is_refused():
    with pytest.raises(storage.UnsupportedPathError, match=r"train_files=s3://b/\*\.txt: s3:// is not served"):
        storage.check_served({"train_files": "/local/a.txt, s3://b/*.txt"})
    storage.check_served({"workdir": "/tmp/x", "init_from": ""})  # local paths and empty settings pass


def test_only_gs_is_served_and_only_with_one_client(monkeypatch):
    monkeypatch.setenv("EPATH_USE_TF", "false")
    storage.check_served({"workdir": "gs://b/run", "train_files": "/a.txt,gs://b/*.txt", "x": None})
    with pytest.raises(storage.UnsupportedPathError, match=r"train_files=s3://b/x: s3:// is not served"):
        storage.check_served({"train_files": "gs://b/a.txt, s3://b/x"})
    monkeypatch.delenv("EPATH_USE_TF")  # orbax would then write gs:// through TensorFlow's client
    with pytest.raises(storage.UnsupportedPathError, match="set EPATH_USE_TF=false"):
        storage.check_served({"workdir": "gs://b/run"})


def test_remote_paths_join_without_becoming_local_directories():
    assert storage.join("gs://b/run/", "checkpoints", "3") == "gs://b/run/checkpoints/3"
    assert storage.absolute("gs://b/run/") == "gs://b/run"
    assert storage.join("/tmp/run", "export") == os.path.join("/tmp/run", "export")


def test_the_jobs_refuse_unserved_paths_before_creating_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EPATH_USE_TF", "false")
    config = runpy.run_path(str(REPO_ROOT / "experiments" / "bert_tiny.py"))["get_config"]()
    with pytest.raises(storage.UnsupportedPathError, match="workdir=s3://bucket/run"):
        pretraining.train_and_evaluate(job_config.parse(config, expect="pretrain"), "s3://bucket/run")
    config.data.train_files = "s3://bucket/books/*.txt"
    with pytest.raises(storage.UnsupportedPathError, match=r"data\.train_files=s3://bucket/books"):
        pretraining.train_and_evaluate(job_config.parse(config, expect="pretrain"), str(tmp_path / "run"))
    config = runpy.run_path(str(REPO_ROOT / "experiments" / "bert_tiny.py"))["get_config"]()
    config.init_from = "s3://bucket/old_run"
    with pytest.raises(storage.UnsupportedPathError, match="init_from=s3://bucket/old_run: s3:// is not served"):
        pretraining.train_and_evaluate(job_config.parse(config, expect="pretrain"), str(tmp_path / "run"))
    finetune = runpy.run_path(str(REPO_ROOT / "experiments" / "glue_sst2.py"))["get_config"]()
    finetune.data_dir = str(tmp_path)  # required, and checked before the paths
    with pytest.raises(storage.UnsupportedPathError, match="workdir=s3://bucket/sst2"):
        finetuning.finetune_and_evaluate(job_config.parse(finetune, expect="finetune"), "s3://bucket/sst2")
    assert os.listdir(tmp_path) == []  # no ./s3:/..., no ./run


def test_the_cli_says_it_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bert_jax_tools.export", "--workdir=s3://bucket/run", f"--output_dir={tmp_path}/x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("bert-jax-export: error: workdir=s3://bucket/run: s3:// is not served")
    )
    assert not (tmp_path / "s3:").exists()
