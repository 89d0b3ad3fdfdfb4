"""Prints one of the README's two fresh-machine commands, exactly as the README shows it.

  python3 .ci/readme_commands.py first [README]    # install + the demo job
  python3 .ci/readme_commands.py second [README]   # install the test extra + the tests

CI runs what this prints, so the README cannot drift from what CI checks: the commands are the first two
```bash blocks of the section "Two commands on a fresh machine". Standard library only (it runs before
any venv exists).
"""

from __future__ import annotations

import pathlib
import re
import sys

SECTION = "## Two commands on a fresh machine"


def readme_commands(readme: str) -> list[str]:
    """The one-line commands of the README's fresh-machine section, in order."""
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    section = readme[start : end if end != -1 else len(readme)]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = [block.strip() for block in blocks]
    for command in commands:
        if "\n" in command:
            raise SystemExit(f"readme_commands: a fresh-machine command must be one line, got:\n{command}")
    if len(commands) != 2:
        raise SystemExit(f"readme_commands: expected 2 commands in '{SECTION}', found {len(commands)}")
    return commands


def main(argv: list[str]) -> None:
    which = {"first": 0, "second": 1}
    if len(argv) not in (2, 3) or argv[1] not in which:
        raise SystemExit("usage: readme_commands.py first|second [README]")
    default = pathlib.Path(__file__).resolve().parent.parent / "README.md"
    readme = pathlib.Path(argv[2] if len(argv) == 3 else default).read_text(encoding="utf-8")
    print(readme_commands(readme)[which[argv[1]]])


if __name__ == "__main__":
    main(sys.argv)
