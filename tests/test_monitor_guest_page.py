"""The agent's metrics text re-served by the shim: bounded, and never under another pod's labels."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from shim.monitor import guest_page
from shim.monitor.guest_page import HOST_LABELS, agent_families
from shim.monitor.page import metrics_page, sandbox_labels
from shim.monitor.parse import parse

FORGED = (
    "# TYPE kata_guest_load gauge\n"
    'kata_guest_load{sandbox_id="other-pod",cri_uid="u2",cri_name="victim",'
    'cri_namespace="prod",__name__="kata_shim_fds",__meta="x",cpu="0"} 1\n'
)


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (family.name + sample.suffix, dict(sample.labels), sample.value)
        for family in parse(text, strict=True)
        for sample in family.samples
    ]


def test_the_host_labels_are_those_the_page_adds():
    every = sandbox_labels("sb", cri_uid="u", cri_name="n", cri_namespace="ns")
    assert set(every) == HOST_LABELS


async def test_a_guest_cannot_put_its_samples_under_another_pods_labels():
    page = await metrics_page(
        [], labels=sandbox_labels("sb1", cri_name="mine", cri_namespace="default"),
        agent_text=FORGED,
    )
    guest = [s for s in samples(page.decode()) if s[0] == "kata_guest_load"]
    assert guest == [(
        "kata_guest_load",
        {
            "sandbox_id": "sb1",
            "cri_name": "mine",
            "cri_namespace": "default",
            "exported_sandbox_id": "other-pod",
            "exported_cri_uid": "u2",
            "exported_cri_name": "victim",
            "exported_cri_namespace": "prod",
            "cpu": "0",
        },
        1.0,
    )]


def test_a_repeated_label_keeps_its_first_value():
    text = 'kata_guest_x{a="1",a="2",sandbox_id="s",exported_sandbox_id="t"} 1\n'
    (family,) = agent_families(text)
    assert family.samples[0].labels == (("a", "1"), ("exported_sandbox_id", "s"))


def test_a_sample_with_too_many_labels_is_dropped(monkeypatch):
    monkeypatch.setattr(guest_page, "MAX_LABELS", 2)
    text = 'kata_guest_x{a="1",b="2"} 1\nkata_guest_x{a="1",b="2",c="3"} 2\n'
    (family,) = agent_families(text)
    assert [sample.value for sample in family.samples] == [1]


def test_a_text_over_the_limit_is_dropped_whole(monkeypatch):
    monkeypatch.setattr(guest_page, "MAX_TEXT", 100)
    with capture_logs() as logs:
        assert agent_families("kata_guest_x 1\n" * 10) == []
    assert logs[0]["event"] == "the agent's metrics text is too long: dropped"


@pytest.mark.parametrize(("families", "per_family", "kept"), [
    (1, 50, 30),  # MAX_SAMPLES
    (50, 1, 20),  # MAX_FAMILIES
])
def test_families_and_samples_are_bounded(monkeypatch, families, per_family, kept):
    monkeypatch.setattr(guest_page, "MAX_SAMPLES", 30)
    monkeypatch.setattr(guest_page, "MAX_FAMILIES", 20)
    text = "".join(
        f'kata_guest_f{f}{{n="{n}"}} {n}\n' for f in range(families) for n in range(per_family)
    )
    with capture_logs() as logs:
        found = agent_families(text)
    assert sum(len(family.samples) for family in found) == kept
    assert logs[0]["dropped"] == families * per_family - kept


def test_the_default_bounds_hold_a_real_agent_page():
    text = "".join(f'kata_guest_meminfo{{item="i{n}"}} {n}\n' for n in range(2000))
    assert len(agent_families(text)[0].samples) == 2000
