"""Parameter sweeps on a real Dask LocalCluster: grids, faults, re-runs, reports.

Every point is a tiny network on the embedded digits, one epoch, one probe
epoch; the cluster is two single-threaded worker processes shared by the tests.
"""

import csv
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

import cloudpickle  # noqa: E402  (a dependency of distributed)

from trlsim.sweep import (  # noqa: E402
    SweepError,
    available_cores,
    build_report,
    load_sweep,
    run_sweep,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 120  # seconds; a safety net only, no test relies on timing

BASE = """\
[network]
hidden = [16, 8]

[optimizer]
learning_rate = 1e-3

[data]
dataset = "digits"
batch_size = 32
chunk_size = 8

[training]
epochs = 1

[probe]
learning_rate = 1e-3
"""


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


def _sweep_file(folder, body, name="grid.toml"):
    """A sweep file over a tiny digits base config, writing into folder/out."""
    folder = Path(folder)
    (folder / "base.toml").write_text(BASE)
    path = folder / name
    path.write_text(f'[sweep]\nbase = "base.toml"\nout = "{folder / "out"}"\n{body}')
    return path


def _summary(folder):
    return json.loads((Path(folder) / "summary.json").read_text())


def _csv_rows(folder):
    with open(Path(folder) / "results.csv", newline="") as file:
        return list(csv.DictReader(file))


# -- running ------------------------------------------------------------------------


def test_grid_runs_every_point_and_tabulates_over_seeds(client, tmp_path):
    path = _sweep_file(
        tmp_path,
        '[axes]\n"rule.rule" = ["trl", "trl-s"]\n"training.seed" = {range = [0, 2]}\n',
    )
    sweep = load_sweep(path)
    events = []
    result = run_sweep(sweep, client=client, on_event=events.append)

    names = ["rule=trl_seed=0", "rule=trl_seed=1", "rule=trl-s_seed=0"]
    names.append("rule=trl-s_seed=1")
    assert [point.name for point in sweep.points] == names
    assert result.ran == tuple(names) and result.skipped == result.failed == ()
    finished = [e for e in events if e.kind == "finished"]
    assert sorted(e.point for e in finished) == sorted(names)
    assert events[-1].done == 4 and events[-1].running == 0
    assert events[-1].failed == 0

    out = tmp_path / "out"
    summaries = {name: _summary(out / name) for name in names}
    share = max(1, available_cores() // 2)
    for name, summary in summaries.items():
        assert summary["status"] == "finished"
        assert summary["machine"]["threads"] == share  # no oversubscription
    assert summaries["rule=trl_seed=0"]["config"]["rule"]["c_var"] == 5.0
    assert summaries["rule=trl-s_seed=1"]["config"]["training"]["seed"] == 1

    rows = _csv_rows(out)
    assert [row["rule.rule"] for row in rows] == ["trl", "trl-s"]
    for row in rows:
        group = [s for n, s in summaries.items() if f"rule={row['rule.rule']}_" in n]
        tests = [100 * s["probe"]["test_accuracy"] for s in group]
        untrained = [100 * s["baseline_probe"]["test_accuracy"] for s in group]
        assert (row["n"], row["failed"], row["missing"]) == ("2", "0", "0")
        assert float(row["test_accuracy_pct_mean"]) == pytest.approx(
            statistics.fmean(tests)
        )
        assert float(row["test_accuracy_pct_std"]) == pytest.approx(
            statistics.stdev(tests)
        )
        assert float(row["untrained_accuracy_pct_mean"]) == pytest.approx(
            statistics.fmean(untrained)
        )
        assert float(row["wall_time_s_mean"]) > 0

    markdown = (out / "results.md").read_text()
    assert markdown == result.report.markdown
    assert "| TRL " in markdown and "| TRL-S " in markdown  # the paper's layout
    assert "4 finished, 0 failed, 0 missing" in markdown
    assert json.loads((out / "failed.json").read_text()) == []


def test_rerun_skips_finished_points(client, tmp_path):
    body = '[axes]\n"training.seed" = [0, 1]\n'
    sweep = load_sweep(_sweep_file(tmp_path, body))
    assert run_sweep(sweep, client=client).ran == ("seed=0", "seed=1")
    out = tmp_path / "out"
    kept = (out / "seed=0" / "summary.json").stat().st_mtime_ns
    (out / "seed=1" / "summary.json").unlink()

    events = []
    result = run_sweep(
        load_sweep(tmp_path / "grid.toml"), client=client, on_event=events.append
    )
    assert result.skipped == ("seed=0",) and result.ran == ("seed=1",)
    assert [e.point for e in events if e.kind == "skipped"] == ["seed=0"]
    assert (out / "seed=0" / "summary.json").stat().st_mtime_ns == kept
    assert _summary(out / "seed=1")["status"] == "finished"

    # Nothing left to run: no cluster is touched, the table is rebuilt.
    result = run_sweep(load_sweep(tmp_path / "grid.toml"), client=client)
    assert result.ran == () and result.report.rows[0]["n"] == 2

    # The same folder with other settings is refused before any work.
    _sweep_file(tmp_path, '[set]\n"training.epochs" = 2\n' + body)
    with pytest.raises(SweepError, match=r"holds a finished run of other settings"):
        run_sweep(load_sweep(tmp_path / "grid.toml"), client=client)
    assert (out / "seed=0" / "summary.json").stat().st_mtime_ns == kept


def test_failing_point_is_recorded_and_the_sweep_goes_on(client, tmp_path):
    path = _sweep_file(tmp_path, '[axes]\n"optimizer.learning_rate" = [1e-3, 1e6]\n')
    events = []
    result = run_sweep(load_sweep(path), client=client, on_event=events.append)

    bad, good = "learning_rate=1000000.0", "learning_rate=0.001"
    assert result.failed == (bad,)
    out = tmp_path / "out"
    assert _summary(out / good)["status"] == "finished"
    error = json.loads((out / bad / "error.json").read_text())
    assert error["error"] == "TrainingDiverged" and "non-finite" in error["message"]
    failed = json.loads((out / "failed.json").read_text())
    assert [entry["point"] for entry in failed] == [bad]
    assert failed[0]["settings"] == {"optimizer.learning_rate": 1e6}
    assert [e.point for e in events if e.kind == "failed"] == [bad]
    assert events[-1].failed == 1 and events[-1].done == 2

    rows = {row["learning_rate"]: row for row in _csv_rows_by_short(out)}
    assert (rows["1000000.0"]["n"], rows["1000000.0"]["failed"]) == ("0", "1")
    assert rows["1000000.0"]["test_accuracy_pct_mean"] == ""
    assert (rows["0.001"]["n"], rows["0.001"]["failed"]) == ("1", "0")
    assert f"- {bad}: TrainingDiverged" in result.report.markdown

    # A re-run tries the failed point again, and only it.
    result = run_sweep(load_sweep(path), client=client)
    assert result.ran == (bad,) and result.failed == (bad,)


def _csv_rows_by_short(folder):
    rows = _csv_rows(folder)
    return [{k.rpartition(".")[2]: v for k, v in row.items()} for row in rows]


class _KillFirstPoint(distributed.WorkerPlugin):
    """SIGKILL the worker process running the first sweep point to start, once
    that point's run has begun; the marker file makes it happen only once."""

    name = "kill-first-point"

    def __init__(self, out, marker):
        self.out, self.marker = str(out), str(marker)

    def setup(self, worker):
        self.worker = worker

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or not str(key).startswith("trlsim-sweep-"):
            return
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        thread = threading.Thread(target=self._kill, args=(str(key),), daemon=True)
        thread.start()

    def _kill(self, key):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = [
                path
                for path in Path(self.out).glob("*/config.toml")
                if f"-{path.parent.name}-" in key
            ]
            if started:
                break
            time.sleep(0.002)
        Path(self.marker).write_text(key)
        os.kill(os.getpid(), signal.SIGKILL)


def test_point_of_a_killed_worker_runs_again(client, tmp_path):
    path = _sweep_file(tmp_path, '[axes]\n"training.seed" = [0, 1, 2]\n')
    marker = tmp_path / "killed"
    # Workers cannot import this test module: send the plugin class itself.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    client.register_plugin(_KillFirstPoint(tmp_path / "out", marker))
    try:
        events = []
        result = run_sweep(load_sweep(path), client=client, on_event=events.append)
    finally:
        client.unregister_worker_plugin(_KillFirstPoint.name)
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])

    assert marker.read_text().startswith("trlsim-sweep-")  # a worker was killed
    assert result.failed == () and len(result.ran) == 3
    for name in result.ran:
        assert _summary(tmp_path / "out" / name)["status"] == "finished"
    retried = [e.point for e in events if e.kind == "retried"]
    assert len(retried) == 1 and f"-{retried[0]}-" in marker.read_text()
    assert build_report(tmp_path / "out").rows[0]["n"] == 3


# -- sweep files --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, fragments",
    [
        (
            '[axes]\n"training.sed" = [1, 2]\n',
            [
                "[axes] unknown config key 'training.sed'",
                "did you mean 'training.seed'",
            ],
        ),
        ("[axes]\nseed = [1, 2]\n", ["[axes] 'seed'", "did you mean 'training.seed'"]),
        ('[axes]\n"trainig.seed" = [1]\n', ["did you mean 'training.seed'"]),
        ('retries = -1\n[axes]\n"training.seed" = [1]\n', ["retries = -1", ">= 0"]),
        ('bsae = 1\n[axes]\n"training.seed" = [1]\n', ["unknown key 'bsae'", "'base'"]),
        ('[axis]\n"training.seed" = [1]\n', ["unknown table 'axis'", "'axes'"]),
        ("[axes]\n", ["[axes] is empty"]),
        ("", ["nothing to sweep", "[[points]]"]),
        ('[axes]\n"training.seed" = []\n', ["'training.seed' = []", "at least one"]),
        ('[axes]\n"training.seed" = 3\n', ["'training.seed' = 3", "list of values"]),
        ('[axes]\n"training.seed" = {range = [5, 2]}\n', ["[5, 2] holds no value"]),
        ('[axes]\n"training.seed" = {range = [0, 1.5]}\n', ["[start, stop]"]),
        ('[axes]\n"training.seed" = {range = [0, 4, 0]}\n', ["step must not be 0"]),
        ('[axes]\n"training.seed" = {step = 1}\n', ["{range = [start, stop]}"]),
        ('[axes]\n"training.seed" = [1, 1]\n', ["value 1 appears twice"]),
        (
            '[axes]\n"rule.rule" = ["trl", "trl-x"]\n',
            ["[axes] 'rule.rule' = 'trl-x'", "must be one of 'trl', 'trl-s'"],
        ),
        (
            '[axes]\n"network.hidden" = [16, 8]\n',
            ["'network.hidden' = 16", "expected a list", "a list of lists"],
        ),
        (
            '[set]\n"data.chunk_size" = 1\n[axes]\n"rule.rule" = ["trl", "trl-s"]\n',
            ["point 1 of 2", "[data] chunk_size = 1: must be >= 2 for rule 'trl'"],
        ),
        ('[set]\n"training.epochs" = 0\n[axes]\n"training.seed" = [1]\n', ["[set]"]),
        (
            '[set]\n"training.seed" = 1\n[axes]\n"training.seed" = [1]\n',
            ["[set] 'training.seed' is also in [axes]"],
        ),
        (
            '[[points]]\n"training.seed" = 1\n[[points]]\n"training.seed" = 1\n',
            ["points 1 and 2 have the same settings"],
        ),
        ("[[points]]\n", ["[[points]] entry 1 is empty"]),
        (
            '[[points]]\n"optimizer.learning_rate" = -1.0\n',
            ["[[points]] entry 1 'optimizer.learning_rate' = -1.0", "must be > 0"],
        ),
    ],
)
def test_invalid_sweep_files_name_what_is_wrong(tmp_path, body, fragments):
    path = _sweep_file(tmp_path, body)
    with pytest.raises(SweepError) as caught:
        load_sweep(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_base_and_bad_toml(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[sweep]\nbase = "nope.toml"\n[axes]\n"training.seed" = [1]\n')
    with pytest.raises(
        SweepError, match=r"base = 'nope.toml': .*config file not found"
    ):
        load_sweep(path)
    path.write_text("[sweep\n")
    with pytest.raises(SweepError, match=r"not valid TOML"):
        load_sweep(path)
    with pytest.raises(SweepError, match=r"sweep file not found"):
        load_sweep(tmp_path / "absent.toml")


def test_points_cross_axes_and_dotted_tables(tmp_path):
    body = (
        "[set.training]\nepochs = 2\n"
        "[axes]\ntraining.seed = {range = [0, 2]}\n"
        '[[points]]\n"rule.rule" = "trl"\n'
        '[[points]]\nrule.rule = "trl-s"\nrule.c_var = 3.0\n'
    )
    sweep = load_sweep(_sweep_file(tmp_path, body))
    assert sweep.varied == ("rule.rule", "rule.c_var", "training.seed")
    assert sweep.group_keys == ("rule.rule", "rule.c_var")
    assert [p.name for p in sweep.points] == [
        "rule=trl_seed=0",
        "rule=trl_seed=1",
        "rule=trl-s_c_var=3.0_seed=0",
        "rule=trl-s_c_var=3.0_seed=1",
    ]
    configs = [p.config for p in sweep.points]
    assert [c.rule.c_var for c in configs] == [5.0, 5.0, 3.0, 3.0]
    assert {c.training.epochs for c in configs} == {2}
    assert sweep.out == tmp_path / "out"


def test_examples_parse():
    paper = load_sweep(EXAMPLES / "paper_table.toml")
    assert len(paper.points) == 20
    assert paper.group_keys == ("network.hidden", "rule.rule")
    assert {p.config.training.seed for p in paper.points} == set(range(42, 47))
    for point in paper.points:
        config = point.config
        assert config.training.train_layers == (0,) and config.training.epochs == 60
        assert config.data.dataset == "mnist"
        # The base spells out TRL-S's values; TRL points get TRL's own.
        expected = {"trl": (5.0, "greedy"), "trl-s": (2.5, "concurrent")}
        assert (config.rule.c_var, config.training.schedule) == expected[
            config.rule.rule
        ]
    quick = load_sweep(EXAMPLES / "sweep_quick.toml")
    assert len(quick.points) == 4 and quick.points[0].config.data.dataset == "digits"


# -- the commands -------------------------------------------------------------------


def _env():
    env = dict(os.environ)
    env.pop("TRLSIM_DATA", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def trlsim(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "trlsim.cli", *map(str, args)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _assert_clean_error(proc, *fragments):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Error:" in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_cli_sweep_and_report(tmp_path):
    (tmp_path / "quickstart.toml").write_text(
        (EXAMPLES / "quickstart.toml").read_text()
    )
    text = (EXAMPLES / "sweep_quick.toml").read_text()
    for old, new in {
        '"network.hidden" = [64, 32]': '"network.hidden" = [16, 8]',
        '"training.epochs" = 5': '"training.epochs" = 1',
        '"training.seed" = [0, 1]': '"training.seed" = [0]',
    }.items():
        assert old in text, f"sweep_quick.toml no longer has {old!r}"
        text = text.replace(old, new)
    (tmp_path / "sweep_quick.toml").write_text(text)

    proc = trlsim("sweep", "sweep_quick.toml", "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 local worker processes x 1 thread" in proc.stderr
    assert "[2/2 done, 0 running, 0 failed] finished" in proc.stderr
    assert "INFO" not in proc.stderr  # dask's own logging kept quiet
    out = tmp_path / "runs" / "sweep_quick"
    assert proc.stdout == (out / "results.md").read_text()
    assert "| TRL " in proc.stdout and "2 finished, 0 failed, 0 missing" in proc.stdout
    for name in ("rule=trl", "rule=trl-s"):
        assert _summary(out / name)["status"] == "finished"

    again = trlsim("sweep", "sweep_quick.toml", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("skipped") == 2 and "running on" not in again.stderr

    (out / "rule=trl" / "summary.json").unlink()
    (out / "results.md").unlink()
    report = trlsim("report", out, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "1 finished, 0 failed, 1 missing" in report.stdout
    assert report.stdout == (out / "results.md").read_text()
    rows = {row["rule.rule"]: row for row in _csv_rows(out)}
    assert (rows["trl"]["n"], rows["trl"]["missing"]) == ("0", "1")

    _assert_clean_error(trlsim("report", tmp_path, cwd=tmp_path), "holds no sweep")
    _assert_clean_error(
        trlsim(
            "sweep",
            "sweep_quick.toml",
            "--scheduler",
            "tcp://x:1",
            "--workers",
            "2",
            cwd=tmp_path,
        ),
        "cannot be used with --scheduler",
    )


def test_cli_sweep_on_a_running_scheduler_reports_a_failed_point(client, tmp_path):
    path = _sweep_file(tmp_path, '[axes]\n"optimizer.learning_rate" = [1e-3, 1e6]\n')
    address = client.scheduler.address
    proc = trlsim("sweep", path, "--scheduler", address, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"running on the Dask scheduler at {address} (2 workers" in proc.stderr
    assert "FAILED    learning_rate=1000000.0: TrainingDiverged:" in proc.stderr
    assert "1 of 2 points failed" in proc.stderr and "failed.json" in proc.stderr
    assert "1 finished, 1 failed, 0 missing" in proc.stdout
    assert "- learning_rate=1000000.0: TrainingDiverged" in proc.stdout


def test_cli_sweep_rejects_a_bad_file_before_any_work(tmp_path):
    path = _sweep_file(tmp_path, '[axes]\n"rule.rule" = ["trl", "trl-x"]\n')
    proc = trlsim("sweep", path, cwd=tmp_path)
    _assert_clean_error(proc, f"{path}: [axes] 'rule.rule' = 'trl-x'")
    assert not (tmp_path / "out").exists()


def test_sweep_without_dask_says_what_to_install(tmp_path):
    path = _sweep_file(tmp_path, '[axes]\n"training.seed" = [1]\n')
    code = (
        "import sys\n"
        "sys.modules['dask'] = sys.modules['distributed'] = None\n"
        "import trlsim, trlsim.cli\n"
        "from trlsim.cli import main\n"
        f"main(['sweep', {str(path)!r}])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    _assert_clean_error(proc, "pip install 'trlsim[sweep]'")

    # Importing trlsim and its command line does not import dask.
    code = "import sys, trlsim, trlsim.cli, trlsim.sweep; print('dask' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.stdout.strip() == "False", proc.stderr
