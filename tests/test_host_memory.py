"""host_memory: when the jobs restart with glibc's huge-page malloc, that the restart keeps the process and its
arguments, and that the tunable does what it is for (far fewer page faults on a large buffer)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from bert_jax.launcher import host_memory
from tests.conftest import REPO_ROOT

GLIBC = (2, 36)
ON = "glibc.malloc.hugetlb=1"


@pytest.mark.parametrize(
    ("environ", "thp_mode", "glibc", "system", "expected"),
    [
        ({}, "madvise", GLIBC, "linux", ON),
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise", GLIBC, "linux", "glibc.malloc.arena_max=2:" + ON),
        ({"GLIBC_TUNABLES": ON}, "madvise", GLIBC, "linux", None),  # already on: no restart loop
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", GLIBC, "linux", None),  # the user's choice stays
        ({"GLIBC_TUNABLES": "x=1: glibc.malloc.hugetlb =2"}, "madvise", GLIBC, "linux", None),
        ({"BERT_JAX_MALLOC_HUGEPAGES": "0"}, "madvise", GLIBC, "linux", None),
        ({"BERT_JAX_MALLOC_HUGEPAGES": "off"}, "madvise", GLIBC, "linux", None),
        ({"BERT_JAX_MALLOC_HUGEPAGES": "1"}, "madvise", GLIBC, "linux", ON),
        ({}, "always", GLIBC, "linux", None),  # every large mapping gets huge pages already
        ({}, "never", GLIBC, "linux", None),  # none can
        ({}, None, GLIBC, "linux", None),  # no THP in this kernel
        ({}, "madvise", (2, 34), "linux", None),  # glibc without the tunable
        ({}, "madvise", (2, 35), "linux", ON),
        ({}, "madvise", (3, 0), "linux", ON),
        ({}, "madvise", None, "linux", None),  # musl
        ({}, "madvise", GLIBC, "darwin", None),
    ],
)
def test_restart_decision(environ, thp_mode, glibc, system, expected):
    assert host_memory.hugepage_malloc_tunables(environ, thp_mode, glibc, system) == expected


@pytest.mark.parametrize(
    ("tunables", "active"),
    [
        (None, False),
        ("", False),
        (ON, True),
        ("glibc.malloc.hugetlb=2", True),  # hugetlbfs pages: also huge
        ("glibc.malloc.hugetlb=0", False),
        ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", True),
        ("glibc.malloc.hugetlb=1:glibc.malloc.hugetlb=0", False),  # the last one wins, as in glibc
        ("glibc.malloc.hugetlbx=1", False),
    ],
)
def test_active_reads_the_tunable(tunables, active):
    environ = {} if tunables is None else {"GLIBC_TUNABLES": tunables}
    assert host_memory.hugepage_malloc_active(environ) is active


def test_thp_mode_is_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    for text, mode in [
        ("always [madvise] never\n", "madvise"),
        ("[always] madvise never\n", "always"),
        ("always madvise [never]\n", "never"),
        ("madvise\n", None),
    ]:
        path.write_text(text)
        assert host_memory.transparent_hugepage_mode(str(path)) == mode
    assert host_memory.transparent_hugepage_mode(str(tmp_path / "missing")) is None


def test_glibc_version_agrees_with_the_platform_module():
    name, version = platform.libc_ver()
    expected = tuple(int(p) for p in version.split(".")[:2]) if name == "glibc" else None
    assert host_memory.glibc_version() == expected


def test_restart_command_keeps_interpreter_options_and_arguments():
    orig = ["python3", "-X", "faulthandler", "-m", "bert_jax_tools.pretrain", "--config=c.py", "--workdir=a b"]
    assert host_memory.restart_command(orig, "/usr/bin/python3") == ["/usr/bin/python3", *orig[1:]]


def _restart_would_apply() -> bool:
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "BERT_JAX_MALLOC_HUGEPAGES")}
    decision = host_memory.hugepage_malloc_tunables(
        environ, host_memory.transparent_hugepage_mode(), host_memory.glibc_version(), sys.platform
    )
    return decision is not None


_RESTART_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    print(json.dumps({"stage": "start", "pid": os.getpid()}), flush=True)
    from bert_jax.launcher import host_memory
    host_memory.restart_with_hugepage_malloc()
    print(json.dumps({"stage": "job", "pid": os.getpid(), "argv": sys.argv[1:],
                      "tunables": os.environ.get("GLIBC_TUNABLES"), "keep": os.environ.get("KEEP_ME")}), flush=True)
    """
)


def _run_restart_script(**extra_env: str) -> tuple[list[dict], str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "BERT_JAX_MALLOC_HUGEPAGES")}
    env.update(KEEP_ME="yes", **extra_env)
    result = subprocess.run(
        [sys.executable, "-c", _RESTART_SCRIPT, "--flag=a b", "x"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()], result.stderr


def test_restart_keeps_pid_arguments_and_environment():
    lines, stderr = _run_restart_script()
    job = lines[-1]
    assert job["stage"] == "job" and job["argv"] == ["--flag=a b", "x"] and job["keep"] == "yes"
    if not _restart_would_apply():
        assert [line["stage"] for line in lines] == ["start", "job"] and job["tunables"] is None
        assert "restarting" not in stderr
        return
    # Started twice (the second time with the tunable), in one process, and said so once.
    assert [line["stage"] for line in lines] == ["start", "start", "job"]
    assert len({line["pid"] for line in lines}) == 1
    assert job["tunables"] == ON
    assert stderr.count("[bert_jax] restarting with GLIBC_TUNABLES=glibc.malloc.hugetlb=1") == 1


def test_opt_out_keeps_the_process_as_started():
    lines, stderr = _run_restart_script(BERT_JAX_MALLOC_HUGEPAGES="0")
    assert [line["stage"] for line in lines] == ["start", "job"] and lines[-1]["tunables"] is None
    assert "restarting" not in stderr


_FAULTS_SCRIPT = textwrap.dedent(
    """
    import ctypes, resource
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    size = 256 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = libc.malloc(ctypes.c_size_t(size))
    ctypes.memset(buffer, 1, size)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _minor_faults(tunables: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    result = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def test_the_tunable_makes_a_large_malloc_fault_in_huge_pages():
    if not _restart_would_apply():
        pytest.skip("this machine's kernel/glibc give no huge-page malloc (THP mode not 'madvise' or glibc < 2.35)")
    plain, huge = _minor_faults(None), _minor_faults(ON)
    # 256 MiB in 4 KiB pages is 65,536 faults; in 2 MiB pages 128 (plus the interpreter's own few hundred).
    assert plain >= 65_536, plain
    assert huge < plain / 20, (huge, plain)


def test_console_scripts_go_through_the_launcher():
    setup = (REPO_ROOT / "setup.py").read_text()
    for script, job in [
        ("bert-jax-pretrain", "pretrain"),
        ("bert-jax-finetune", "finetune"),
        ("bert-jax-benchmark", "benchmark"),
    ]:
        assert f'"{script}=bert_jax_tools.launch:{job}"' in setup, script
    # The benchmark job through its launcher, stopped by a config mistake before any compile.
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "BERT_JAX_MALLOC_HUGEPAGES")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from bert_jax_tools import launch; launch.benchmark()",
            f"--config={REPO_ROOT / 'experiments' / 'bert_tiny.py'}",
            "--config.global_batch_size=3",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "bert-jax-benchmark: error: Parallelism settings do not fit:" in result.stderr  # the job itself ran
    assert ("restarting with GLIBC_TUNABLES" in result.stderr) is _restart_would_apply()
