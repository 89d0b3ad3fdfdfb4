"""Checks that every console script of the installed bert_jax starts: its module imports and its flags parse.

Run after a (re)install; a broken editable install shows up here as a ModuleNotFoundError or a traceback.
"""

from __future__ import annotations

import subprocess
from importlib.metadata import distribution


def main() -> None:
    scripts = sorted(
        (ep for ep in distribution("bert_jax").entry_points if ep.group == "console_scripts"), key=lambda ep: ep.name
    )
    if not scripts:
        raise SystemExit("FAILED: bert_jax declares no console scripts")
    for ep in scripts:  # each in its own process: the tools define absl flags at import time
        out = subprocess.run([ep.name, "--helpshort"], capture_output=True, text=True, timeout=300)
        text = out.stdout + out.stderr
        if "Traceback" in text or "flags" not in text.lower():
            raise SystemExit(f"FAILED: {ep.name} --helpshort:\n{text[-2000:]}")
    print(f"   {len(scripts)} console scripts start: {', '.join(ep.name for ep in scripts)}")


if __name__ == "__main__":
    main()
