"""Prometheus text format 0.0.4: rendering families and reading them back."""

from __future__ import annotations

import math

import pytest

from pykata_common.exposition import (
    CONTENT_TYPE,
    Family,
    escape_help,
    escape_label_value,
    format_value,
    render,
    render_bytes,
    with_labels,
)
from shim.monitor.parse import parse


def test_gauge_family_with_help_type_and_labels():
    family = Family("kata_shim_fds", "Open fds.").add(12)
    status = Family("kata_shim_proc_status", "Status.")
    status.add(1024, {"item": "vmrss"}).add(0, (("item", "vmswap"),))
    assert render([family, status]) == (
        "# HELP kata_shim_fds Open fds.\n"
        "# TYPE kata_shim_fds gauge\n"
        "kata_shim_fds 12\n"
        "# HELP kata_shim_proc_status Status.\n"
        "# TYPE kata_shim_proc_status gauge\n"
        'kata_shim_proc_status{item="vmrss"} 1024\n'
        'kata_shim_proc_status{item="vmswap"} 0\n'
    )


def test_counter_and_untyped_types_are_written():
    text = render([Family("a_total", "A.", "counter").add(3), Family("b", "B.", "untyped").add(1)])
    assert "# TYPE a_total counter\na_total 3\n" in text
    assert "# TYPE b untyped\nb 1\n" in text


def test_label_values_escape_backslash_quote_and_newline():
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_label_value("plain") == "plain"
    line = render([Family("m", "M.").add(1, {"path": 'C:\\x "y"\nz'})]).splitlines()[2]
    assert line == 'm{path="C:\\\\x \\"y\\"\\nz"} 1'


def test_help_escapes_backslash_and_newline_but_not_quotes():
    assert escape_help('one\\two\nthree "q"') == 'one\\\\two\\nthree "q"'
    assert render([Family("m", "a\nb").add(1)]).splitlines()[0] == "# HELP m a\\nb"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (12, "12"),
        (3.0, "3"),
        (32768000.0, "32768000"),
        (0.25, "0.25"),
        (1e20, "1e+20"),
        (2.0**60, "1.152921504606847e+18"),
        (-1.5, "-1.5"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_value_formatting(value, text):
    assert format_value(value) == text


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count():
    family = Family("rpc_ms", "RPC.", "histogram")
    family.add_histogram([1, 2.5, 4], [1, 0, 2, 3], 123.5, {"action": "create"})
    assert render([family]).splitlines()[2:] == [
        'rpc_ms_bucket{action="create",le="1"} 1',
        'rpc_ms_bucket{action="create",le="2.5"} 1',
        'rpc_ms_bucket{action="create",le="4"} 3',
        'rpc_ms_bucket{action="create",le="+Inf"} 6',
        'rpc_ms_sum{action="create"} 123.5',
        'rpc_ms_count{action="create"} 6',
    ]


def test_histogram_without_labels_and_shape_checks():
    family = Family("h", "H.", "histogram").add_histogram([1], [0, 0], 0)
    assert render([family]).splitlines()[2:] == [
        'h_bucket{le="1"} 0',
        'h_bucket{le="+Inf"} 0',
        "h_sum 0",
        "h_count 0",
    ]
    with pytest.raises(ValueError, match="one entry per bound"):
        Family("h", "H.", "histogram").add_histogram([1, 2], [1, 2], 0)
    with pytest.raises(ValueError, match="not a histogram"):
        Family("g", "G.").add_histogram([1], [0, 0], 0)


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b", "é"])
def test_invalid_metric_names_are_refused(name):
    with pytest.raises(ValueError, match="metric name"):
        Family(name, "x")


@pytest.mark.parametrize("label", ["", "1a", "a-b", "__reserved"])
def test_invalid_label_names_are_refused(label):
    with pytest.raises(ValueError, match="label name"):
        Family("m", "x").add(1, {label: "v"})


def test_unknown_type_is_refused():
    with pytest.raises(ValueError, match="type"):
        Family("m", "x", "gaugeish")


def test_families_of_one_name_are_merged_without_touching_the_originals():
    first = Family("kata_hypervisor_fds", "Fds.").add(3, {"sandbox_id": "a"})
    second = Family("kata_hypervisor_fds", "Fds.").add(4, {"sandbox_id": "b"})
    text = render([first, Family("other", "O.").add(1), second])
    assert text.count("# TYPE kata_hypervisor_fds") == 1
    assert text.splitlines()[2:4] == [
        'kata_hypervisor_fds{sandbox_id="a"} 3',
        'kata_hypervisor_fds{sandbox_id="b"} 4',
    ]
    assert len(first.samples) == 1 and len(second.samples) == 1


def test_a_family_redeclared_with_another_type_is_dropped():
    text = render([Family("m", "M.").add(1), Family("m", "M.", "counter").add(2)])
    assert text == "# HELP m M.\n# TYPE m gauge\nm 1\n"


def test_with_labels_prepends_labels_and_keeps_existing_values():
    family = Family("m", "M.").add(1, {"item": "x"}).add(2, {"sandbox_id": "own"})
    out = with_labels([family], {"sandbox_id": "sb1", "namespace": "k8s.io"})
    assert render(out).splitlines()[2:] == [
        'm{sandbox_id="sb1",namespace="k8s.io",item="x"} 1',
        'm{namespace="k8s.io",sandbox_id="own"} 2',
    ]
    assert family.samples[0].labels == (("item", "x"),)


def test_empty_render_and_bytes():
    assert render([]) == ""
    assert render_bytes([Family("m", "é").add(1)]) == "# HELP m é\n# TYPE m gauge\nm 1\n".encode()
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


# -- reading ----------------------------------------------------------------


def test_parse_reads_back_what_render_writes():
    histogram = Family("rpc_ms", "RPC\\ms\nlatency.", "histogram")
    histogram.add_histogram([1, 2], [1, 2, 3], 42.25, {"action": "wait"})
    families = [
        Family("g", "G.").add(1.5, {"a": 'q"\\\n'}).add(math.inf, {"a": "inf"}),
        histogram,
        Family("c_total", "C.", "counter").add(7),
    ]
    text = render(families)
    assert render(parse(text, strict=True)) == text


def test_parse_agent_style_text_with_timestamps_comments_and_untyped_samples():
    text = (
        "# a free comment\n"
        "# HELP kata_guest_load Guest load.\n"
        "# TYPE kata_guest_load gauge\n"
        'kata_guest_load{item="load1"} 0.5 1700000000000\n'
        'kata_guest_load{item="load5",} 0.25\n'
        "\n"
        "process_open_fds 9\n"
        "# TYPE kata_agent_rpc summary\n"
        'kata_agent_rpc{quantile="0.5"} 1\n'
        "kata_agent_rpc_sum 3\n"
        "kata_agent_rpc_count 2\n"
    )
    families = {f.name: f for f in parse(text, strict=True)}
    assert list(families) == ["kata_guest_load", "process_open_fds", "kata_agent_rpc"]
    load = families["kata_guest_load"]
    assert (load.kind, load.help) == ("gauge", "Guest load.")
    assert [(s.labels, s.value) for s in load.samples] == [
        ((("item", "load1"),), 0.5),
        ((("item", "load5"),), 0.25),
    ]
    assert families["process_open_fds"].kind == "untyped"
    assert [s.suffix for s in families["kata_agent_rpc"].samples] == ["", "_sum", "_count"]


def test_parse_skips_bad_lines_unless_strict():
    text = "# TYPE m gauge\nm 1\nm{item=unquoted} 2\nnot a sample line at all\nm 3\n"
    assert [s.value for s in parse(text)[0].samples] == [1, 3]
    with pytest.raises(ValueError, match="line 3"):
        parse(text, strict=True)


def test_parse_refuses_a_type_line_after_samples_in_strict_mode():
    with pytest.raises(ValueError, match="after its samples"):
        parse("m 1\n# TYPE m gauge\n", strict=True)
