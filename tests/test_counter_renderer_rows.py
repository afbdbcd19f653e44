"""nflog.CounterRenderer on rows made in Python (no kernel): what a hand-made snapshot renders to.

Rows have no entry serials to cache by, so every row's label string is built on every render; the
merging of equal label strings and the overflow series are the same as for Counts.
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nflogd import nflog

FAMILIES = ((b"# HELP p_total Packets.\n# TYPE p_total counter\n", b"p_total"),
            (b"# HELP b_total Bytes.\n# TYPE b_total counter\n", b"b_total"))


def samples(body: bytes) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("x", "")): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def test_rows_merge_by_label_string_with_overflow_and_tail() -> None:
    calls: list[tuple] = []

    def labels(key: tuple) -> str:
        calls.append(key)
        return '{x="%s"}' % ("even" if key[0] % 2 == 0 else "odd")

    rows = [((0,), 1, 10), ((1,), 2, 20), ((2,), 4, 40)]
    r = nflog.CounterRenderer()
    body = r.render([(rows, labels, '{x="over"}', (8, 80)), ([((3,), 16, 160)], labels, None)],
                    0, FAMILIES, b"t 1\n")
    assert body.endswith(b"t 1\n")
    assert samples(body[:-4]) == {("p_total", "even"): 5, ("b_total", "even"): 50,
                                  ("p_total", "odd"): 18, ("b_total", "odd"): 180,
                                  ("p_total", "over"): 8, ("b_total", "over"): 80}
    assert len(calls) == 4
    r.render([(rows, labels, None)], 0, FAMILIES)
    assert len(calls) == 7  # no serials: built again


def test_bad_rows_and_parts_raise() -> None:
    r = nflog.CounterRenderer()
    with pytest.raises(TypeError, match="a row is"):
        r.render([([("not a row",)], str, None)], 0, FAMILIES)
    with pytest.raises(TypeError, match="must return str"):
        r.render([([((1,), 1, 1)], lambda k: 5, None)], 0, FAMILIES)
    with pytest.raises(TypeError, match="a part is"):
        r.render([(1, 2)], 0, FAMILIES)
    with pytest.raises(TypeError):
        r.render([(5, str, None)], 0, FAMILIES)  # not iterable
    assert r.render([], 0, FAMILIES) == FAMILIES[0][0] + FAMILIES[1][0]


def test_counts_of_an_empty_aggregator_and_misuse() -> None:
    agg = nflog.Aggregator(["uid", "prefix"])
    c = nflog.Counts(agg)
    assert (len(c), c.fields, c.sum, c.overflow, c.rows(), c.aggregator) == \
        (0, ("uid", "prefix"), (0, 0), (0, 0), [], agg)
    assert len(agg.counts()) == 0
    r = nflog.CounterRenderer()
    assert r.render([(c, str, "{x=\"o\"}")], 0, FAMILIES) == FAMILIES[0][0] + FAMILIES[1][0]
    with pytest.raises(RuntimeError, match="already initialised"):
        c.__init__(agg)
    bare = nflog.Counts.__new__(nflog.Counts)
    with pytest.raises(RuntimeError, match="__init__ was not called"):
        bare.rows()
    with pytest.raises(RuntimeError, match="__init__ was not called"):
        r.render([(bare, str, None)], 0, FAMILIES)
    with pytest.raises(TypeError):
        nflog.Counts(5)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="Aggregator.__init__"):
        nflog.Counts(nflog.Aggregator.__new__(nflog.Aggregator))
