import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from infer_lib import plotting  # noqa: E402


def test_axis_labels_need_units():
    with pytest.raises(ValueError, match="has no unit"):
        plotting.figure("t", xlabel="size", ylabel="time (µs)")


def test_legend_says_where_numbers_come_from():
    fig, ax = plotting.figure("t", xlabel="buffer size (bytes)", ylabel="bandwidth (GB/s)", logx=True)
    prov = {"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-11-26"}
    plotting.series(ax, [1, 2], [3, 4], label="copy", source=plotting.reference(prov))
    plotting.hline(ax, 3350, label="HBM3 peak", source=plotting.datasheet("H100 SXM"))
    plotting.bytes_formatter(ax)
    plotting.finish(ax, note="median of CUDA-graph replays")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["copy [reference: NVIDIA H100 80GB HBM3, 2026-11-26]", "HBM3 peak [datasheet: H100 SXM]"]
    assert ax.get_xscale() == "log"


def test_bytes_formatter_writes_sizes_as_measure_does():
    from infer_lib import measure

    fig, ax = plotting.figure("t", xlabel="buffer size (bytes)", ylabel="bandwidth (GB/s)", logx=True)
    plotting.bytes_formatter(ax)
    fmt = ax.xaxis.get_major_formatter()
    for v in (512, 4096, 3 * 2**20, 2**31):
        assert fmt(v, 0) == measure.format_bytes(v)
    assert fmt(2**30, 0) == "1 GiB"


def test_say_joins_and_wraps(capsys):
    from infer_lib import plotting

    plotting.say("a" * 60, "b" * 60)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(len(line) <= 100 for line in lines) and lines[1].startswith("  b")
    plotting.say("x = ", "1", sep="")
    assert capsys.readouterr().out == "x = 1\n"


def test_legend_below_sits_under_the_axes():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="a line")
    plotting.legend_below(ax, offset=-0.2, fontsize=7)
    legend = ax.get_legend()
    assert legend is not None and legend.get_texts()[0].get_fontsize() == 7
    fig.canvas.draw()
    box = legend.get_window_extent().transformed(ax.transAxes.inverted())
    assert box.y1 <= 0   # entirely below the axes
    plt.close(fig)
