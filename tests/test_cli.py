"""What the commands share (gkd_tune/cli.py): output folders checked before anything opens, one-line endings."""

import os
from pathlib import Path

import pytest

from gkd_tune import report, reproduce
from gkd_tune.cli import EXIT_INTERRUPTED, check_output_folder, run_command

ROOT = Path(__file__).resolve().parents[1]


def test_an_output_folder_is_checked_before_anything_opens(tmp_path):
    assert check_output_folder(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"--out .*afile: is a file, not a folder"):
        check_output_folder(tmp_path / "afile", "--out")
    with pytest.raises(ValueError, match=r"--out .*afile/below: cannot be written \(.*afile is not a writable folder\)"):
        check_output_folder(tmp_path / "afile" / "below", "--out")
    if os.getuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="is not a writable folder"):
            check_output_folder(locked / "out", "--out")


@pytest.mark.parametrize("command, argv", [
    (report.main, ["--space", str(ROOT / "search_spaces" / "quickstart.yaml")]),
    (reproduce.main, ["--config", str(ROOT / "reproduce" / "smoke.yaml")]),
])
def test_an_out_that_is_a_file_ends_the_command_in_one_line_before_ray_or_mlflow(tmp_path, monkeypatch, capsys,
                                                                                 command, argv):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert command(argv + ["--out", "afile", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --out afile: is a file, not a folder\n"
    assert not (tmp_path / "m.db").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_command_ends_on_ctrl_c_and_errors_in_one_line(capsys):
    def interrupted():
        raise KeyboardInterrupt

    assert run_command(interrupted, debug=False, interrupted=lambda: "stopped here") == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "\nstopped here\n"

    def broken():
        raise RuntimeError("first line\nsecond line")

    assert run_command(broken, debug=False) == 1
    assert capsys.readouterr().err == "error: RuntimeError: first line  (--debug shows the traceback)\n"


@pytest.mark.parametrize("data, message", [
    ({"source": "parquet:/nonexistent/train.parquet"}, r"error: data source 'parquet:/nonexistent/train.parquet': "
                                                       r"no such file or directory"),
    ({"source": "digits:/x"}, r"error: .*s.yaml: data.source: data source 'digits:/x': digits takes no path"),
])
def test_a_dry_run_finds_unreadable_data_before_ray(tmp_path, monkeypatch, capsys, data, message):
    import re
    import time

    import yaml

    from gkd_tune import search

    monkeypatch.chdir(tmp_path)
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({"name": "s", "data": data, "params": {"b": {"uniform": [1.0, 5.0]}}}))
    started = time.monotonic()
    assert search.main(["--space", str(space), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err  # the plan's warnings, then the one error line
    assert re.match(message, err.splitlines()[-1]) and not any(line.startswith("error") for line in
                                                               err.splitlines()[:-1]), err
