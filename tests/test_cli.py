"""The ``trlsim`` command, run as a real subprocess in a temporary folder."""

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from trlsim.config import Config, load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 120  # seconds; a safety net only, no test relies on timing

# Every table a config has, as Config itself lists them.
TABLES = tuple(Config().to_dict())


def _env():
    env = dict(os.environ)
    env.pop("TRLSIM_DATA", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def trlsim(*args, cwd):
    """Run ``python -m trlsim.cli ARGS`` in ``cwd``; return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "trlsim.cli", *map(str, args)],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
    )


def _small_quickstart(folder, name="quick.toml", **replace):
    """examples/quickstart.toml with a small network, batches of 32 and 2 epochs."""
    text = (EXAMPLES / "quickstart.toml").read_text()
    text = re.sub(r"(?m)^hidden = .*$", "hidden = [16, 8]", text)
    text = re.sub(r"(?m)^batch_size = .*$", "batch_size = 32", text)
    text = re.sub(r"(?m)^chunk_size = .*$", "chunk_size = 8", text)
    # The [training] table's epochs: the only epochs key the example sets.
    text = re.sub(r"(?m)^epochs = .*$", "epochs = 2", text)
    for old, new in replace.items():
        assert old in text, f"quickstart.toml no longer has {old!r}"
        text = text.replace(old, new)
    path = Path(folder) / name
    path.write_text(text)
    return path


def _summary(folder):
    return json.loads((Path(folder) / "summary.json").read_text())


def _assert_clean_error(proc, *fragments):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Error:" in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


# --- a full run ---------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One small run with overrides from the command line."""
    folder = tmp_path_factory.mktemp("run")
    config = _small_quickstart(folder)
    proc = trlsim("run", config.name, "--epochs", "1", "--seed", "5", "--threads", "1",
                  "--set", 'rule.rule="trl"', "--set", "data.coherence=0.75",
                  "--out", "out", cwd=folder)
    return folder, proc


def test_run_finishes_and_writes_the_summary(finished_run):
    folder, proc = finished_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = _summary(folder / "out")
    assert summary["status"] == "finished"
    assert summary["layer_sizes"] == [64, 16, 8]
    assert summary["learning_layers"] == [0, 1]
    assert summary["dataset"]["name"] == "digits"
    assert summary["dataset"]["n_features"] == 64
    for key in ("probe", "baseline_probe"):
        probe = summary[key]
        assert 0.0 <= probe["test_accuracy"] <= 1.0
        assert 0.0 <= probe["train_accuracy"] <= 1.0
        assert probe["layers"] == [0, 1]
        assert probe["epochs"] == 1
    training = summary["training"]
    assert training["interrupted"] is False
    # trl resolves to the greedy schedule: one phase per layer, one epoch each.
    assert [p["layers"] for p in training["phases"]] == [[0], [1]]
    assert training["steps"] == 2 * (1442 // 32)
    assert len(training["history"]) == 2
    assert (folder / "out" / "config.toml").is_file()
    assert not list((folder / "out").glob("*.partial"))


def test_overrides_reach_the_summary_config(finished_run):
    folder, _ = finished_run
    config = _summary(folder / "out")["config"]
    assert config["training"]["epochs"] == 1
    assert config["training"]["seed"] == 5
    assert config["training"]["threads"] == 1
    assert config["rule"]["rule"] == "trl"
    assert config["data"]["coherence"] == 0.75
    # Rule-dependent defaults follow the overridden rule.
    assert config["rule"]["c_var"] == 5.0
    assert config["training"]["schedule"] == "greedy"
    # Keys not overridden come from the file.
    assert config["network"]["hidden"] == [16, 8]
    assert config["data"]["batch_size"] == 32


def test_run_prints_the_summary_lines(finished_run):
    folder, proc = finished_run
    out = proc.stdout
    assert "status:        finished" in out
    assert "layers:        64-16-8  (learning: [0, 1])" in out
    assert "training:      90 steps" in out
    assert "probe:         test " in out
    assert "untrained:     test " in out
    assert "summary:       out/summary.json" in out
    summary = _summary(folder / "out")
    assert f"{100 * summary['probe']['test_accuracy']:.2f}%" in out
    assert f"{100 * summary['baseline_probe']['test_accuracy']:.2f}%" in out
    # Stages go to stderr, so stdout stays the summary.
    assert "trlsim: training: 90 steps" in proc.stderr
    assert "trlsim: loading digits" in proc.stderr


def test_saved_config_is_the_one_that_ran(finished_run):
    folder, _ = finished_run
    saved = load_config(folder / "out" / "config.toml")
    assert saved.to_dict() == _summary(folder / "out")["config"]


def test_second_run_into_the_same_folder_is_refused(tmp_path):
    config = _small_quickstart(tmp_path, **{"epochs = 2": "epochs = 1"})
    first = trlsim("run", config.name, "--out", "out", "--threads", "1", "-q",
                   cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # -q: only the summary, no stage lines.
    assert first.stderr == ""
    assert "status:        finished" in first.stdout
    before = (tmp_path / "out" / "summary.json").read_text()

    again = trlsim("run", config.name, "--out", "out", "--threads", "1",
                   cwd=tmp_path)
    _assert_clean_error(again, "out already holds a run", "--overwrite")
    assert (tmp_path / "out" / "summary.json").read_text() == before

    forced = trlsim("run", config.name, "--out", "out", "--threads", "1",
                    "--seed", "9", "--overwrite", "-q", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    summary = _summary(tmp_path / "out")
    assert summary["status"] == "finished"
    assert summary["config"]["training"]["seed"] == 9


def test_default_output_folder_and_verbose_logging(tmp_path):
    config = _small_quickstart(tmp_path, "tiny.toml",
                               **{"[probe]": "[probe]\nenabled = false"})
    proc = trlsim("run", config.name, "--epochs", "1", "--threads", "1", "-v",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = _summary(tmp_path / "runs" / "tiny")
    assert summary["status"] == "finished"
    assert "probe" not in summary and "baseline_probe" not in summary
    assert "summary:       runs/tiny/summary.json" in proc.stdout
    assert "INFO trlsim.train: phase 0: layers [0, 1] learn for 1 epochs" in proc.stderr


# --- configuration errors -----------------------------------------------------


@pytest.mark.parametrize(
    "old, new, fragments",
    [
        ("epochs = 2", "epoch = 2",
         ["[training]", "unknown key 'epoch'", "did you mean 'epochs'?"]),
        ("epochs = 2", 'epochs = "two"',
         ["[training] epochs = 'two'", "expected an integer"]),
        ("chunk_size = 8", "chunk_size = 8\ncoherence = 1.5",
         ["[data] coherence = 1.5", "in [0, 1]"]),
        ("[rule]", "[rules]", ["unknown table [rules]", "did you mean [rule]?"]),
        ("epochs = 2", "epochs = 2 2", ["not valid TOML"]),
    ],
    ids=["unknown key", "wrong type", "coherence", "unknown table", "invalid TOML"],
)
def test_bad_config_is_a_clean_error(tmp_path, old, new, fragments):
    config = _small_quickstart(tmp_path, "bad.toml", **{old: new})
    proc = trlsim("run", config.name, "--threads", "1", cwd=tmp_path)
    _assert_clean_error(proc, "bad.toml", *fragments)
    assert not (tmp_path / "runs").exists()


def test_missing_config_file(tmp_path):
    proc = trlsim("run", "nowhere.toml", cwd=tmp_path)
    _assert_clean_error(proc, "nowhere.toml", "not found")


@pytest.mark.parametrize(
    "assignment, fragments",
    [
        ("training.epochs=0", ["[training] epochs = 0", ">= 1"]),
        ("epochs=3", ["TABLE.KEY=VALUE"]),
    ],
)
def test_bad_set_is_a_clean_error(tmp_path, assignment, fragments):
    config = _small_quickstart(tmp_path)
    proc = trlsim("run", config.name, "--set", assignment, cwd=tmp_path)
    _assert_clean_error(proc, *fragments)


def test_mnist_without_data_lists_where_it_looked(tmp_path):
    config = tmp_path / "mnist.toml"
    config.write_text('[network]\nhidden = [8]\n[data]\ndataset = "mnist"\n'
                      "[training]\nepochs = 1\n")
    proc = trlsim("run", config.name, "--threads", "1", cwd=tmp_path)
    _assert_clean_error(proc, "cannot find the mnist dataset", "looked in",
                        "$TRLSIM_DATA (not set)", "[data] path",
                        "train-images-idx3-ubyte")


def test_too_many_threads_is_a_clean_error(tmp_path):
    config = _small_quickstart(tmp_path)
    proc = trlsim("run", config.name, "--threads", "100000", "--out", "out",
                  cwd=tmp_path)
    _assert_clean_error(proc, "threads")


def test_empty_probe_layers_do_not_crash(tmp_path):
    config = _small_quickstart(tmp_path)
    proc = trlsim("run", config.name, "--epochs", "1", "--threads", "1",
                  "--set", "probe.layers=[]", "--out", "out", cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode != 0:
        _assert_clean_error(proc, "layers")


# --- other commands -----------------------------------------------------------


def test_config_reference_lists_every_table(tmp_path):
    assert {"network", "rule", "optimizer", "data", "training", "probe",
            "output"} <= set(TABLES)
    proc = trlsim("config-reference", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for table in TABLES:
        assert f"## [{table}]" in proc.stdout
    for key in ("`c_var`", "`train_layers`", "`coherence`", "`learning_rate`"):
        assert key in proc.stdout


def test_help(tmp_path):
    proc = trlsim("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "run" in proc.stdout and "config-reference" in proc.stdout
    proc = trlsim("run", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    for option in ("--epochs", "--seed", "--out", "--threads", "--set",
                   "--overwrite", "--verbose", "--quiet"):
        assert option in proc.stdout


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).with_name("trlsim")
    if not script.exists():
        pytest.skip("no trlsim script beside this Python")
    proc = subprocess.run([str(script), "--version"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0
    assert "trlsim" in proc.stdout


# --- Ctrl-C -------------------------------------------------------------------


def test_sigint_stops_the_run_and_keeps_a_summary(tmp_path):
    config = _small_quickstart(
        tmp_path, "long.toml",
        **{"epochs = 2": "epochs = 5000",
           "[probe]": "[probe]\nbaseline = false\nepochs = 1"},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "trlsim.cli", "run", config.name, "--threads", "1",
         "--out", "out"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    lines = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in proc.stderr], daemon=True
    )
    reader.start()
    seen = []
    try:
        # Wait for the training stage, then for the progress bar's label: it is
        # printed at the first progress report, when training (and its SIGINT
        # handler) is running. Should the bar change, a few seconds after the
        # stage line do as well.
        deadline = None
        while True:
            try:
                line = lines.get(timeout=TIMEOUT if deadline is None else 0.5)
            except queue.Empty:
                if deadline is not None and time.monotonic() > deadline:
                    break
                assert deadline is not None, "no stage line:\n" + "".join(seen)
                continue
            seen.append(line)
            if line.startswith("trlsim: training:") and deadline is None:
                deadline = time.monotonic() + 10
            if line.strip() == "train":
                break
        assert proc.poll() is None, "the run ended early:\n" + "".join(seen)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=TIMEOUT)  # the summary is far below a pipe's buffer
        stdout = proc.stdout.read()
        reader.join(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while not lines.empty():
        seen.append(lines.get())
    stderr = "".join(seen)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr

    summary = _summary(tmp_path / "out")
    assert summary["status"] == "interrupted"
    training = summary["training"]
    assert training["interrupted"] is True
    total = 5000 * (1442 // 32)
    assert 1 <= training["steps"] < total
    assert training["samples"] == 32 * training["steps"]
    assert f"after {training['steps']} of {total} steps" in summary["note"]
    assert "probe" not in summary
    assert "status:        interrupted" in stdout
    assert f"training:      {training['steps']} steps" in stdout
