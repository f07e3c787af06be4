"""Plots of recorded runs and the ``trlsim inspect`` / ``trlsim plot`` commands."""

import matplotlib

matplotlib.use("Agg")

import shutil  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import small_recorded_config  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import trlsim  # noqa: E402
from trlsim import plots  # noqa: E402
from trlsim.analysis import MissingDataError  # noqa: E402
from trlsim.cli import main  # noqa: E402
from trlsim.experiment import run  # noqa: E402
from trlsim.record import FIELDS, Recorder  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DPI = 40  # small files, fast tests


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory):
    """A finished run on the digits set recording every field."""
    config = small_recorded_config()
    return run(config, out=tmp_path_factory.mktemp("run"))["trace"]


@pytest.fixture(scope="module")
def var_only_path(tmp_path_factory):
    """A trace of a network stepped by hand, recording only ``var``."""
    path = tmp_path_factory.mktemp("var") / "var.h5"
    net = trlsim.Network([16, 8], seed=0)
    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    with Recorder(path, net, fields=("var",), every=1) as recorder:
        for _ in range(3):
            recorder.after_step(net, None, net.step(x))
    return path


@pytest.fixture
def trace(trace_path):
    with trlsim.open_trace(trace_path) as opened:
        yield opened


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_error(result, *fragments):
    assert result.exit_code != 0, result.output
    # A handled error exits through SystemExit; anything else is a traceback.
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Error:" in result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)


# -- the plot functions ----------------------------------------------------------


def test_vector_formats_and_a_path_instead_of_a_trace(trace_path, tmp_path):
    svg = plots.save_plot(trace_path, "probe", tmp_path / "probe.svg")
    assert b"<svg" in svg.read_bytes()
    pdf = plots.save_plot(trace_path, "memory", tmp_path / "memory.PDF", layer=1)
    assert pdf.read_bytes().startswith(b"%PDF")


def test_plots_draw_into_given_axes_and_figures(trace):
    fig = Figure()
    ax = fig.add_subplot()
    assert plots.plot_probe(trace, ax=ax) is fig
    assert plots.plot_losses(trace, ax=ax, terms=["sim", "lat"]) is fig
    assert plots.plot_memory(trace, layer=1, field="mean", neurons=[0, 3], ax=ax) is fig
    other = Figure()
    assert plots.plot_receptive_fields(trace, n=4, fig=other) is other
    assert len(other.axes) == 4
    assert plots.plot_lateral_vs_covariance(trace, layer=1, fig=other) is other
    assert "relative error" in other.get_suptitle()


def test_plots_refuse_unknown_formats_kinds_and_neurons(trace, tmp_path):
    with pytest.raises(ValueError, match=r"\.png, \.pdf, \.svg"):
        plots.save_plot(trace, "losses", tmp_path / "losses.jpg")
    with pytest.raises(ValueError, match="plots: losses, memory"):
        plots.save_plot(trace, "histogram", tmp_path / "x.png")
    with pytest.raises(ValueError, match="takes no layer"):
        plots.save_plot(trace, "probe", tmp_path / "x.png", layer=1)
    with pytest.raises(ValueError, match="not recorded"):
        plots.plot_memory(trace, neurons=[99])


def test_missing_field_error_names_the_field_and_setting(var_only_path, tmp_path):
    with trlsim.open_trace(var_only_path) as trace:
        with pytest.raises(MissingDataError) as caught:
            plots.save_plot(trace, "lateral", tmp_path / "lateral.png")
        assert "'lateral'" in str(caught.value)
        assert '[record] fields = ["var", "lateral"]' in str(caught.value)
        with pytest.raises(MissingDataError, match="no probe results"):
            plots.plot_probe(trace)
        plots.plot_memory(trace, field="var")  # what was recorded still plots


# -- trlsim inspect ------------------------------------------------------------


def test_inspect_reports_fields_status_and_results(trace_path):
    result = cli("inspect", trace_path)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "status:      finished" in out
    assert "format:      trlsim-trace version 1" in out
    assert "64-12-8, rule trl-s, seed 0" in out
    for field in FIELDS:
        assert f"\n  {field} " in out, field
    assert "12x64 | 8x12" in out  # weights per record, both layers
    assert "snapshots:   2, at steps 10, 20" in out
    assert "probe:     test" in out and "untrained: test" in out
    assert "samples/s" in out


def test_inspect_a_live_trace(tmp_path):
    path = tmp_path / "live.h5"
    net = trlsim.Network([16, 8], seed=0)
    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    with Recorder(
        path, net, fields=("mean", "losses"), every=1, neurons=[0, 2]
    ) as recorder:
        recorder.after_step(net, None, net.step(x))
        recorder.flush()
        result = cli("inspect", path)
    assert result.exit_code == 0, result.output
    assert "status:      running" in result.output
    assert "results:     none stored yet" in result.output
    assert "layer 0: 2 of 8" in result.output


def test_inspect_refuses_a_newer_format_version(trace_path, tmp_path):
    newer = tmp_path / "newer.h5"
    shutil.copy(trace_path, newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = 99
    assert_clean_error(cli("inspect", newer), "version 99", "upgrade trlsim")


def test_inspect_refuses_files_that_are_not_traces(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not an HDF5 file\n")
    assert_clean_error(cli("inspect", text), "cannot open as HDF5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    assert_clean_error(cli("inspect", other), "not a trlsim trace")
    assert_clean_error(cli("inspect", tmp_path / "missing.h5"), "no such trace")


# -- trlsim plot -----------------------------------------------------------------


def test_plot_one_kind(trace_path, tmp_path):
    out = tmp_path / "fields.svg"
    result = cli("plot", trace_path, "receptive-fields", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0 and f"wrote {out}" in result.output
    assert_clean_error(
        cli("plot", trace_path, "probe", "-o", tmp_path / "p.bmp"), ".png, .pdf, .svg"
    )
    assert_clean_error(
        cli("plot", trace_path, "weights", "-o", tmp_path / "w.png"),
        "choose one of: losses",
    )
    assert "selectivity" in cli("plot", "--help").output


def test_plot_all_writes_what_the_trace_can_make(trace_path, var_only_path, tmp_path):
    full = tmp_path / "full"
    result = cli("plot", trace_path, "all", "-o", full, "--dpi", DPI)
    assert result.exit_code == 0, result.output
    # Every plot, each a real PNG (this is the test that draws them all).
    assert sorted(p.name for p in full.iterdir()) == sorted(
        f"{kind}.png" for kind in plots.PLOTS
    )
    for kind in plots.PLOTS:
        data = (full / f"{kind}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, kind
        assert f"wrote {full / kind}.png" in result.output

    partial = tmp_path / "partial"
    result = cli("plot", var_only_path, "all", "-o", partial, "--dpi", DPI)
    assert result.exit_code == 0, result.output
    assert [p.name for p in partial.iterdir()] == ["memory.png"]
    skipped = [
        line for line in result.output.splitlines() if line.startswith("skipped")
    ]
    assert len(skipped) == len(plots.PLOTS) - 1
    assert any(
        "skipped lateral:" in line and "[record] fields" in line for line in skipped
    )

    assert_clean_error(
        cli("plot", var_only_path, "lateral", "-o", tmp_path / "l.png"),
        "'lateral'",
        "[record] fields",
    )
