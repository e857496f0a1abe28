#!/usr/bin/env python3
"""Reads a Prometheus text exposition (0.0.4) on stdin with prometheus-client's parser
and checks what that parser lets through: every family has HELP and TYPE, counters end
in _total and are not negative, and each histogram's buckets are cumulative, end in
+Inf and agree with its _count. Prints a summary; exits 1 with the reasons otherwise."""

import math
import sys
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    problems = []
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser raises ValueError and friends
        print(f"prometheus-client cannot parse it: {e!r}", file=sys.stderr)
        return 1
    declared = set()
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) >= 3 and parts[0] == "#" and parts[1] in ("HELP", "TYPE"):
            declared.add((parts[1], parts[2]))
    samples = 0
    for fam in families:
        # prometheus-client names a counter's family without its _total suffix.
        exposed = fam.name + "_total" if fam.type == "counter" else fam.name
        for what in ("HELP", "TYPE"):
            if (what, exposed) not in declared:
                problems.append(f"{exposed}: no # {what} line")
        if fam.type == "unknown":
            problems.append(f"{fam.name}: samples without a declared type")
        if fam.type == "histogram":
            problems += check_histogram(fam)
        for s in fam.samples:
            samples += 1
            if fam.type == "counter":
                if not s.name.endswith("_total"):
                    problems.append(f"counter sample {s.name} does not end in _total")
                if s.value < 0 or math.isnan(s.value):
                    problems.append(f"counter {s.name}{s.labels} is {s.value}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(f"prometheus-client: {len(families)} families, {samples} samples")
    return 0


def check_histogram(fam):
    problems = []
    series = defaultdict(lambda: {"buckets": [], "count": None})
    for s in fam.samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        if s.name.endswith("_bucket"):
            series[key]["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            series[key]["count"] = s.value
    for key, h in series.items():
        bounds = [b for b, _ in h["buckets"]]
        values = [v for _, v in h["buckets"]]
        if not bounds or bounds[-1] != math.inf:
            problems.append(f"{fam.name}{key}: no +Inf bucket last")
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            problems.append(f"{fam.name}{key}: bucket bounds not increasing")
        if values != sorted(values):
            problems.append(f"{fam.name}{key}: buckets not cumulative: {values}")
        if values and h["count"] != values[-1]:
            problems.append(f"{fam.name}{key}: _count {h['count']} != +Inf bucket {values[-1]}")
    return problems


if __name__ == "__main__":
    sys.exit(main())
