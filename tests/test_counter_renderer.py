"""nflog.CounterRenderer: the record counters written in C, against records from the real kernel.

What a scrape relies on: every series' numbers equal the nft rule counters of the keys behind it,
keys whose label strings are equal are one series (also across groups), each key's label string
is built once while the key lives and rebuilt when the tag says names or config changed, and a
label callable that fails fails the render, not the next one.
"""

from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netns import Netns
from nflog_support import aggregate_until, open_in, require_root, rule_counts
from nflogd import nflog

FAMILIES = ((b"# HELP p_total Packets.\n# TYPE p_total counter\n", b"p_total"),
            (b"# HELP b_total Bytes.\n# TYPE b_total counter\n", b"b_total"))


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


def parse(body: bytes) -> dict[tuple[str, frozenset], float]:
    out: dict[tuple[str, frozenset], float] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


class Labels:
    """A label callable that counts its calls per key."""

    def __init__(self, render=None) -> None:  # type: ignore[no-untyped-def]
        self.calls: list[tuple] = []
        self._render = render or (lambda key: '{prefix="%s"}' % key[0].decode())

    def __call__(self, key: tuple) -> str:
        self.calls.append(key)
        return self._render(key)


def flood(ns: Netns, plan: dict[int, int]) -> None:
    for port, count in plan.items():
        ns.send_udp("127.0.0.1", port, count, 60 + port % 7)


RULES = """
table ip t {
  chain out { type filter hook output priority 0;
    udp dport 7301 counter log prefix "pa" group 3 comment "pa"
    udp dport 7302 counter log prefix "pb" group 3 comment "pb"
    udp dport 7303 counter log prefix "pc" group 3 comment "pc"
    udp dport 7311 counter log prefix "pa" group 4 comment "g4pa"
  }
}"""


def test_series_equal_rule_counters_and_labels_are_built_once_per_key() -> None:
    with Netns("rend") as ns:
        ns.nft(RULES)
        with open_in(ns, 3, qthresh=50, timeout=0.05) as h:
            agg = nflog.Aggregator(["prefix"])
            flood(ns, {7301: 7, 7302: 11})
            aggregate_until(h, agg, 18)
            r = nflog.CounterRenderer()
            labels = Labels()
            body = r.render([(agg, labels, None)], "tag1", FAMILIES, b"# tail\nt 1\n")
            assert body.startswith(FAMILIES[0][0]) and body.endswith(b"# tail\nt 1\n")
            s = parse(body)
            for p in ("pa", "pb"):
                assert (s[("p_total", frozenset({("prefix", p)}))],
                        s[("b_total", frozenset({("prefix", p)}))]) == rule_counts(ns, p)
            assert sorted(labels.calls) == [(b"pa",), (b"pb",)] and r.labels == 2

            # A Counts is a frozen copy: more records do not change it, and it renders the same.
            frozen = agg.counts()
            assert sorted(frozen.rows()) == sorted(agg.snapshot()) and len(frozen) == 2
            assert frozen.overflow == (0, 0) and frozen.aggregator is agg
            assert frozen.fields == ("prefix",) and frozen.sum == rule_counts(ns, "pa", "pb")

            # More records, one new key: the callable sees only the new key.
            flood(ns, {7301: 5, 7303: 3})
            aggregate_until(h, agg, 26)
            assert len(frozen) == 2 and sorted(frozen.rows()) != sorted(agg.snapshot())
            assert r.render([(frozen, labels, None)], "tag1", FAMILIES) == body[:-len(b"# tail\nt 1\n")]
            assert len(labels.calls) == 2  # the frozen keys were known: no new label
            s = parse(r.render([(agg.counts(), labels, None)], "tag1", FAMILIES))
            assert sorted(labels.calls) == [(b"pa",), (b"pb",), (b"pc",)] and r.labels == 3
            for p in ("pa", "pb", "pc"):
                assert (s[("p_total", frozenset({("prefix", p)}))],
                        s[("b_total", frozenset({("prefix", p)}))]) == rule_counts(ns, p)

            # A new tag (names or config changed): every label is built again.
            r.render([(agg, labels, None)], "tag2", FAMILIES)
            assert len(labels.calls) == 6

            # A cleared aggregator's keys are gone, and so are their cached labels.
            agg.clear()
            body = r.render([(agg, labels, None)], "tag2", FAMILIES)
            assert body == FAMILIES[0][0] + FAMILIES[1][0] and r.labels == 0


def test_equal_label_strings_are_one_series_across_keys_and_groups() -> None:
    with Netns("rendm") as ns:
        ns.nft(RULES)
        with open_in(ns, 3, qthresh=50, timeout=0.05) as h3, \
                open_in(ns, 4, qthresh=50, timeout=0.05) as h4:
            a3, a4 = nflog.Aggregator(["prefix"]), nflog.Aggregator(["prefix"])
            flood(ns, {7301: 4, 7302: 6, 7303: 8, 7311: 10})
            aggregate_until(h3, a3, 18)
            aggregate_until(h4, a4, 10)
            # "pa" and "pb" both render as action="accept", in both groups.
            action = Labels(lambda k: '{action="%s"}' % ("drop" if k[0] == b"pc" else "accept"))
            s = parse(nflog.CounterRenderer().render(
                [(a3, action, None), (a4, action, None)], (), FAMILIES))
            assert s == {
                ("p_total", frozenset({("action", "accept")})):
                    rule_counts(ns, "pa", "pb", "g4pa")[0],
                ("b_total", frozenset({("action", "accept")})):
                    rule_counts(ns, "pa", "pb", "g4pa")[1],
                ("p_total", frozenset({("action", "drop")})): rule_counts(ns, "pc")[0],
                ("b_total", frozenset({("action", "drop")})): rule_counts(ns, "pc")[1],
            }
            assert len(action.calls) == 4  # one per key, merged or not


def test_overflow_series_and_failures() -> None:
    with Netns("rendo") as ns:
        ns.nft(RULES)
        with open_in(ns, 3, qthresh=50, timeout=0.05) as h:
            agg = nflog.Aggregator(["prefix"], max_keys=1)
            flood(ns, {7301: 3})
            aggregate_until(h, agg, 3)
            flood(ns, {7302: 5, 7303: 2})
            aggregate_until(h, agg, 10)
            r = nflog.CounterRenderer()
            s = parse(r.render([(agg, Labels(), '{prefix="__overflow__"}')], 1, FAMILIES))
            assert s[("p_total", frozenset({("prefix", "pa")}))] == rule_counts(ns, "pa")[0]
            over = frozenset({("prefix", "__overflow__")})
            assert (s[("p_total", over)], s[("b_total", over)]) == rule_counts(ns, "pb", "pc")

            def boom(key: tuple) -> str:
                raise ValueError("label bug")
            r2 = nflog.CounterRenderer()
            with pytest.raises(ValueError, match="label bug"):
                r2.render([(agg, boom, None)], 1, FAMILIES)
            with pytest.raises(TypeError, match="must return str"):
                r2.render([(agg, lambda k: b"{}", None)], 1, FAMILIES)
            with pytest.raises(TypeError, match="not iterable"):  # neither Counts nor rows
                r2.render([(object(), Labels(), None)], 1, FAMILIES)
            with pytest.raises(TypeError):
                r2.render([(agg, Labels(), 5)], 1, FAMILIES)
            # The failures left nothing half-done behind.
            s = parse(r2.render([(agg, Labels(), None)], 1, FAMILIES))
            assert s[("p_total", frozenset({("prefix", "pa")}))] == rule_counts(ns, "pa")[0]


def test_concurrent_renders_while_records_arrive() -> None:
    """Scrapes from several threads while the worker folds: every body parses, no counter ever
    goes backwards, and the last one equals the rule counters."""
    with Netns("rendc") as ns:
        ns.nft(RULES)
        with open_in(ns, 3, qthresh=20, timeout=0.02) as h:
            agg = nflog.Aggregator(["prefix"])
            r = nflog.CounterRenderer()
            stop = threading.Event()
            errors: list[BaseException] = []

            def scraper() -> None:
                last = 0.0
                try:
                    for _ in range(400):
                        if stop.is_set():
                            break
                        s = parse(r.render([(agg, Labels(), None)], 1, FAMILIES))
                        total = sum(v for (n, _), v in s.items() if n == "p_total")
                        assert total >= last
                        last = total
                except BaseException as e:  # reported below
                    errors.append(e)

            threads = [threading.Thread(target=scraper) for _ in range(4)]
            for t in threads:
                t.start()
            try:
                flood(ns, {7301: 300, 7302: 200, 7303: 100})
                aggregate_until(h, agg, 600)
            finally:
                stop.set()
                for t in threads:
                    t.join(30)
            assert not errors, errors
            s = parse(r.render([(agg, Labels(), None)], 1, FAMILIES))
            for p in ("pa", "pb", "pc"):
                assert s[("p_total", frozenset({("prefix", p)}))] == rule_counts(ns, p)[0]
