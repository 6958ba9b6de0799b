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


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_unreachable_storage_ends_search_report_and_reproduce_alike(tmp_path, scheme):
    """A bucket that cannot be reached (no network here; a missing bucket elsewhere) ends each command with exit 2 and
    one `error: storage_path ...` line before Ray or a teacher, whether the probe fails or gets no answer in time."""
    import subprocess
    import sys

    storage = f"{scheme}://gkd-tune-no-such-bucket-0/runs"
    env = dict(os.environ, GKD_TUNE_PROBE_TIMEOUT_S="2")
    quickstart = str(ROOT / "search_spaces" / "quickstart.yaml")
    modules = {"search": ["--space", quickstart], "report": ["--space", quickstart],
               "reproduce": ["--config", str(ROOT / "reproduce" / "smoke.yaml")]}
    started = {module: subprocess.Popen([sys.executable, "-m", f"gkd_tune.{module}", *argv, "--storage-path", storage,
                                         "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"], cwd=tmp_path, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for module, argv in modules.items()}  # side by side: each mostly waits on its probe
    for module, command in started.items():
        stdout, stderr = command.communicate(timeout=120)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert command.returncode == 2 and len(lines) == 1, (module, stdout[-2000:], stderr[-2000:])
        assert lines[0].startswith("error: storage_path") and storage in lines[0], (module, lines)
        assert "ray" not in stdout.lower() and not (tmp_path / "mlflow.db").exists(), module


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon", "1e9"])
def test_a_bad_probe_deadline_is_named(monkeypatch, value):
    from gkd_tune.cluster import preflight

    monkeypatch.setenv(preflight.PROBE_TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=rf"^GKD_TUNE_PROBE_TIMEOUT_S: must be a number of seconds in \(0, 600\], "
                                         rf"got '{value}'$"):
        preflight.within_deadline(lambda: None, "anything")


def test_a_local_storage_path_is_recorded_absolute(tmp_path, monkeypatch):
    """A sweep started with --storage-path runs continues with --storage-path $PWD/runs, or from another folder."""
    from gkd_tune.cli import shared_options

    monkeypatch.chdir(tmp_path)
    parser = shared_options()
    assert parser.parse_args(["--storage-path", "runs"]).storage_path == str(tmp_path / "runs")
    assert parser.parse_args(["--storage-path", "s3://b/r?scheme=http"]).storage_path == "s3://b/r?scheme=http"
