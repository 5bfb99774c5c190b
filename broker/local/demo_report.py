"""``broker demo``, the report: the summary printed at the end.

Pure rendering: everything is handed in, nothing is read from the emulator here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from broker.local.demo_person import PersonReport
from broker.local.demo_plan import Case, Judgement, Verdict
from broker.observability.stats import Outcome
from broker.service import Broker

__all__ = ["Starts", "exit_code", "percentile", "report", "summary_table"]

_PROBLEMS_LISTED: Final = 20


@dataclass(frozen=True)
class Starts:
    """How starting the executions went: how many, and how long it took (None: never ended)."""

    count: int
    seconds: float | None


def report(
    judgements: Sequence[Judgement],
    starts: Starts,
    broker: Broker,
    left: Mapping[str, int],
    planned: int,
    emulator_errors: Counter[str],
    person: PersonReport | None = None,
) -> list[str]:
    """The summary printed to stdout at the end."""
    leftovers = "  ".join(f"{name} {count}" for name, count in left.items() if count)
    empty = "none (seed, dead-letter and inbox queues empty)"
    return [
        "",
        *summary_table(judgements),
        "",
        *_timing(judgements, starts),
        *_broker_counters(broker),
        *(decision_lines(person) if person is not None else []),
        *_emulator_errors(emulator_errors),
        f"queues       messages left: {leftovers or empty}",
        *_problems(judgements, planned - len(judgements), person),
    ]


def exit_code(
    judgements: Sequence[Judgement], planned: int, person: PersonReport | None = None
) -> int:
    """0 only if every planned execution ran and ended as its handler decided (or still
    waits, as planned), and every decision link answered as it should."""
    problems = any(j.verdict in {Verdict.UNEXPECTED, Verdict.STUCK} for j in judgements)
    links_wrong = person is not None and bool(person.problems)
    return 1 if problems or links_wrong or len(judgements) < planned else 0


def decision_lines(person: PersonReport) -> list[str]:
    """What happened to the approvals: notifications, pages, decisions."""
    repeats = ", ".join(f"{status}" for status in sorted(person.repeats)) or "not tried"
    return [
        f"decisions    {person.notifications} sent through SNS to the inbox queue; "
        f"{person.pages} GETs (mail scanner, person) showed the page, decided nothing",
        f"             {person.approved} approved, {person.rejected} rejected (POST); "
        f"{len(person.only_opened)} only opened, still waiting as planned; "
        f"a link POSTed twice: {repeats}",
    ]


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def summary_table(judgements: Sequence[Judgement]) -> list[str]:
    columns = ["executions", *(verdict.value for verdict in Verdict)]
    rows: list[tuple[str, list[int]]] = []
    for case in Case:
        mine = [j for j in judgements if j.planned.case is case]
        rows.append((case.label, _counts(mine)))
    rows.append(("total", _counts(judgements)))
    label_width = max(len("flow"), *(len(label) for label, _ in rows))
    widths = [max(len(column), 6) for column in columns]
    header = "  ".join(
        ["flow".ljust(label_width), *(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    )
    lines = [header, "-" * len(header)]
    for label, counts in rows:
        if label == "total":
            lines.append("-" * len(header))
        cells = (str(n).rjust(w) for n, w in zip(counts, widths, strict=True))
        lines.append("  ".join([label.ljust(label_width), *cells]))
    return lines


def _counts(judgements: Sequence[Judgement]) -> list[int]:
    verdicts = Counter(j.verdict for j in judgements)
    return [len(judgements), *(verdicts[verdict] for verdict in Verdict)]


def _timing(judgements: Sequence[Judgement], starts: Starts) -> list[str]:
    ended = [j.result for j in judgements if j.result.stopped_at is not None]
    lines = []
    if starts.seconds is not None and starts.count:
        lines.append(
            f"starting     {starts.count} executions in {starts.seconds:.1f} s "
            f"({starts.count / max(starts.seconds, 1e-9):.0f}/s, moto's pace)"
        )
    if not ended:
        return [*lines, "throughput   no execution ended"]
    first_start = min(r.started_at for r in ended)
    last_stop = max(r.stopped_at for r in ended if r.stopped_at is not None)
    window_s = max((last_stop - first_start).total_seconds(), 1e-3)
    latencies_ms = sorted(
        (r.stopped_at - r.started_at).total_seconds() * 1000
        for r in ended
        if r.stopped_at is not None
    )
    quantiles = "  ".join(
        f"{name} {percentile(latencies_ms, fraction):.0f} ms"
        for name, fraction in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0))
    )
    return [
        *lines,
        f"throughput   {len(ended) / window_s:.1f} executions/s "
        f"({len(ended)} ended in {window_s:.1f} s, first start to last stop)",
        # Step Functions' own dates (1 ms resolution in moto): the queue wait is included.
        f"latency      {quantiles}  (execution startDate to stopDate)",
    ]


def _broker_counters(broker: Broker) -> list[str]:
    stats = broker.stats
    deleters = [consumer.queue.deleter for consumer in broker.consumers]
    outcomes = "  ".join(
        f"{outcome.value} {stats.total(outcome)}" for outcome in Outcome if stats.total(outcome)
    )
    lines = [
        f"broker       received {stats.received.total()}  {outcomes or 'no outcomes'}  "
        f"deleted {sum(d.deleted for d in deleters)} in {sum(d.batches for d in deleters)} "
        "batches"
    ]
    for consumer in broker.consumers:
        queue = consumer.queue
        outcomes = "  ".join(
            f"{outcome.value} {stats.outcomes[(queue.name, outcome)]}"
            for outcome in Outcome
            if stats.outcomes[(queue.name, outcome)]
        )
        deleter = queue.deleter
        failed = f", {deleter.failed} failed" if deleter.failed else ""
        lines.append(
            f"  {queue.name:<18} received {stats.received[queue.name]:>4}  "
            f"{outcomes or 'no outcomes'}  "
            f"deleted {deleter.deleted} in {deleter.batches} batches{failed}"
        )
    return lines


def _emulator_errors(seen: Counter[str]) -> list[str]:
    if not seen:
        return []
    lines = [
        f"moto         {seen.total()} request(s) failed inside moto (HTTP 500; clients retry them):"
    ]
    lines.extend(f"  {count}x {error[:200]}" for error, count in seen.most_common())
    return lines


def _problems(
    judgements: Sequence[Judgement], not_started: int, person: PersonReport | None = None
) -> list[str]:
    bad = [j for j in judgements if j.verdict in {Verdict.UNEXPECTED, Verdict.STUCK}]
    link_problems = person.problems if person is not None else []
    if not bad and not not_started and not link_problems:
        waiting = sum(1 for j in judgements if j.verdict is Verdict.WAITING_AS_EXPECTED)
        if not waiting:
            return [
                f"verdict      all {len(judgements)} executions ended as their handlers decided"
            ]
        return [
            f"verdict      all {len(judgements)} executions as their handlers and the person "
            f"decided: {len(judgements) - waiting} ended, {waiting} still waiting for a "
            "decision (its link opened, never used)"
        ]
    counts = Counter(j.verdict for j in bad)
    summary = f"{counts[Verdict.UNEXPECTED]} unexpected, {counts[Verdict.STUCK]} stuck"
    if not_started:
        summary += f", {not_started} never started"
    if link_problems:
        summary += f", {len(link_problems)} decision link problem(s)"
    lines = [f"verdict      FAILED: {summary}"]
    for judgement in bad[:_PROBLEMS_LISTED]:
        name = judgement.result.arn.rsplit(":", 1)[-1]
        lines.append(f"  {name} ({judgement.planned.case.label}): {judgement.reason}")
    if len(bad) > _PROBLEMS_LISTED:
        lines.append(f"  … and {len(bad) - _PROBLEMS_LISTED} more")
    lines.extend(f"  {problem}" for problem in link_problems[:_PROBLEMS_LISTED])
    return lines
