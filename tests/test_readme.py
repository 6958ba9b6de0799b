"""Every command the README shows parses: gkd-tune's own with their command's parser, Python one-liners compile."""

import importlib
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("    ")]
    return [shlex.split(line) for line in lines if line]


def test_every_gkd_tune_command_in_the_readme_parses():
    checked = 0
    for words in readme_commands():
        commands, current = [], []
        for word in words + ["&&"]:  # one line may chain commands
            if word == "&&":
                commands.append(current)
                current = []
            else:
                current.append(word)
        for argv in commands:
            if "-c" in argv and "python" in argv[0]:  # a Python one-liner (pip's -c is its constraints file)
                compile(argv[argv.index("-c") + 1], "README", "exec")
                checked += 1
            if "-m" in argv and argv[argv.index("-m") + 1].startswith("gkd_tune."):
                module = argv[argv.index("-m") + 1]
                rest = argv[argv.index("-m") + 2:]
                importlib.import_module(module).build_parser().parse_args(rest)
                checked += 1
    assert checked == 7  # the quickstart, the student's one-liner, export, search, simulate, the cluster's job,
    # reproduce


def test_the_readme_stays_short_and_its_links_exist():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 80
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
