"""What a run measured, the Markdown tables printed at its end, the targets and the JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .load import LoadResult
from .pgbench import PgbenchResult

MB = 1024 * 1024
RSS_TARGET = 200 * MB  # per server process, through every measurement
RPCS = ("ActivateSeat", "RenewLease", "ReleaseSeat", "CheckLicense")
KINDS = {"fresh": "fresh entitlement", "history": "released", "big": "live seats"}


@dataclass(frozen=True)
class Measured:
    """One row: a load measurement and what the server spent on it."""

    name: str
    in_flight: int
    load: LoadResult
    cpu_per_call_s: float
    rss: tuple[int, ...]  # bytes, one per server process, at the end of the measurement


@dataclass(frozen=True)
class Oversell:
    """The hot entitlement's limit check: more devices than free seats, at once."""

    seats: int
    live_before: int
    tried: int
    codes: dict[str, int]
    live_after: int

    @property
    def oversold(self) -> bool:
        return self.live_after > self.seats

    @property
    def granted(self) -> int:
        return self.codes.get("OK", 0)


@dataclass(frozen=True)
class MemoryRun:
    """Many new devices activated one after another: the server's RSS before and after."""

    activations: int
    rss_before: tuple[int, ...]
    measured: Measured  # its RSS: after

    @property
    def peak(self) -> int:
        return max(self.measured.rss, default=0)


@dataclass
class Figures:
    scale: str
    duration_s: float
    warmup_s: float
    load_processes: int
    serve_args: list[str]
    seeded: dict[str, int]
    echo: dict[int, Measured] = field(default_factory=dict)
    rpcs: dict[tuple[str, int], Measured] = field(default_factory=dict)
    history: dict[tuple[str, str], Measured] = field(default_factory=dict)  # (rpc, kind)
    oversell: Oversell | None = None
    memory: MemoryRun | None = None
    pgbench: dict[str, PgbenchResult] = field(default_factory=dict)  # "spread", "hot"
    pgbench_missing: str = ""
    elapsed_s: float = 0.0

    @property
    def history_in_flight(self) -> int:
        return next(iter(self.history.values())).in_flight if self.history else 0


# --- cells ------------------------------------------------------------------------


def _ratio(value: float, base: float | None) -> float | None:
    if base is None or base <= 0 or math.isnan(base):
        return None
    return value / base


def _x(ratio: float | None, of: str = "") -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x" + (f" {of}" if of else "")


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def _errors(codes: dict[str, int]) -> str:
    failures = {code: n for code, n in codes.items() if code != "OK"}
    return ", ".join(f"{code} {n:,}" for code, n in sorted(failures.items())) or "0"


def _rss(rss: tuple[int, ...]) -> str:
    if not rss:
        return "n/a"
    if len(rss) == 1:
        return f"{rss[0] / MB:.0f} MB"
    return f"{sum(rss) / MB:.0f} MB ({len(rss)} proc, max {max(rss) / MB:.0f})"


def _row(label: str, m: Measured, ratio: str) -> str:
    cells = [
        label,
        str(m.in_flight),
        f"{m.load.calls_per_s:,.0f}",
        ratio,
        _ms(m.load.p50_s),
        _ms(m.load.p99_s),
        _errors(m.load.codes),
        f"{m.cpu_per_call_s * 1e6:,.0f} µs",
        _rss(m.rss),
    ]
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


# --- tables -----------------------------------------------------------------------


def _echo_rate(f: Figures, in_flight: int) -> float | None:
    echo = f.echo.get(in_flight)
    return echo.load.calls_per_s if echo else None


def rpc_table(f: Figures) -> list[str]:
    lines = _table(
        ["RPC", "in flight", "calls/s", "x echo", "p50", "p99", "errors", "server CPU/call", "RSS"]
    )
    for _, m in sorted(f.echo.items()):
        lines.append(_row("echo (grpc.aio)", m, "1.00x"))
    for name in RPCS:
        for (rpc, in_flight), m in sorted(f.rpcs.items()):
            if rpc == name:
                ratio = _ratio(m.load.calls_per_s, _echo_rate(f, in_flight))
                lines.append(_row(name, m, _x(ratio)))
    return lines


def history_label(f: Figures, rpc: str, kind: str) -> str:
    if kind == "history":
        return f"{rpc}, {f.seeded.get('history_released', 0):,} released"
    if kind == "big":
        return f"{rpc}, {f.seeded.get('big_live', 0):,} live seats"
    if rpc == "ActivateSeat":
        return "ActivateSeat, hot: all on one fresh entitlement"
    return f"{rpc}, fresh entitlement"


def history_ratio(f: Figures, rpc: str, kind: str) -> float | None:
    m = f.history[(rpc, kind)]
    if kind == "fresh":
        hot = f.pgbench.get("hot")
        return _ratio(m.load.calls_per_s, hot.tps) if rpc == "ActivateSeat" and hot else None
    fresh = f.history.get((rpc, "fresh"))
    return _ratio(m.load.calls_per_s, fresh.load.calls_per_s if fresh else None)


def history_table(f: Figures) -> list[str]:
    header = ["entitlement", "in flight", "calls/s", "x baseline", "p50", "p99", "errors"]
    lines = _table([*header, "server CPU/call", "RSS"])
    for rpc in ("CheckLicense", "ActivateSeat"):
        for kind in KINDS:
            m = f.history.get((rpc, kind))
            if m is None:
                continue
            ratio = history_ratio(f, rpc, kind)
            if kind != "fresh":
                cell = _x(ratio, "fresh")
            elif rpc == "ActivateSeat":
                cell = _x(ratio, "pgbench one row")
            else:
                cell = "baseline"
            lines.append(_row(history_label(f, rpc, kind), m, cell))
    return lines


def pgbench_table(f: Figures) -> list[str]:
    if f.pgbench_missing:
        return [f"pgbench: not run ({f.pgbench_missing})"]
    lines = _table(
        ["pgbench activate_seat.sql", "clients", "tx/s", "failed", "server ActivateSeat", "x"]
    )
    pairs = {
        "spread": (f"random of {f.seeded.get('bulk_entitlements', 0):,} entitlements", 64),
        "hot": ("one row", 0),
    }
    for key, (label, in_flight) in pairs.items():
        result = f.pgbench.get(key)
        if result is None:
            continue
        server = (
            f.rpcs.get(("ActivateSeat", in_flight))
            if in_flight
            else f.history.get(("ActivateSeat", "fresh"))
        )
        rate = server.load.calls_per_s if server else float("nan")
        where = f"@{server.in_flight}, " if server else ""
        what = "spread" if in_flight else "hot"
        cells = [
            label,
            str(result.clients),
            f"{result.tps:,.0f}",
            str(result.failed),
            f"{rate:,.0f}/s ({where}{what})",
            _x(_ratio(rate, result.tps)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def oversell_line(f: Figures) -> str:
    o = f.oversell
    if o is None:
        return "Hot entitlement limit: not checked"
    verdict = "OVERSOLD" if o.oversold else "not one seat oversold"
    return (
        f"Hot entitlement limit: {o.seats:,} seats, {o.live_before:,} in use, {o.tried} more "
        f"devices at once: {o.granted} granted, refused {_errors(o.codes)}; "
        f"live seats by SQL afterwards {o.live_after:,}: {verdict}"
    )


def memory_line(f: Figures) -> str:
    m = f.memory
    if m is None:
        return "Memory over many activations: not measured"
    load = m.measured.load
    return (
        f"Memory over {m.activations:,} activations of new devices ({m.measured.in_flight} in "
        f"flight, {load.calls_per_s:,.0f} calls/s, errors {_errors(load.codes)}): server RSS "
        f"{_rss(m.rss_before)} before, {_rss(m.measured.rss)} after"
    )


# --- targets ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    text: str
    measured: str
    met: bool | None  # None: could not be measured


def _at_least(text: str, ratio: float | None, floor: float) -> Target:
    return Target(text, _x(ratio), None if ratio is None else ratio >= floor)


def targets(f: Figures) -> list[Target]:
    found: list[Target] = []
    echo64 = _echo_rate(f, 64)
    for rpc, floor in (("ActivateSeat", 0.40), ("RenewLease", 0.50), ("CheckLicense", 0.60)):
        m = f.rpcs.get((rpc, 64))
        ratio = _ratio(m.load.calls_per_s, echo64) if m else None
        found.append(_at_least(f"{rpc} >= {floor:.2f}x echo at 64 in flight", ratio, floor))
    act16 = f.rpcs.get(("ActivateSeat", 16))
    p99 = act16.load.p99_s if act16 else float("nan")
    found.append(
        Target(
            "ActivateSeat p99 <= 15 ms at 16 in flight",
            _ms(p99),
            None if math.isnan(p99) else p99 <= 0.015,
        )
    )
    for rpc in ("ActivateSeat", "CheckLicense"):
        for kind in ("history", "big"):
            if (rpc, kind) in f.history:
                label = history_label(f, rpc, kind).split(", ", 1)[1]
                ratio = history_ratio(f, rpc, kind)
                found.append(_at_least(f"{rpc} on {label} >= 0.80x fresh", ratio, 0.80))
    if ("ActivateSeat", "fresh") in f.history:
        ratio = history_ratio(f, "ActivateSeat", "fresh")
        found.append(_at_least("all on one entitlement >= 0.60x pgbench one row", ratio, 0.60))
    if f.oversell is not None:
        o = f.oversell
        found.append(
            Target("not one seat oversold", f"{o.live_after:,}/{o.seats:,} live", not o.oversold)
        )
    peak = max((max(m.rss) for m in _all_rows(f) if m.rss), default=0)
    limit = f"{RSS_TARGET / MB:.0f} MB per worker"
    found.append(Target(f"RSS <= {limit}", f"{peak / MB:.0f} MB", peak <= RSS_TARGET))
    if f.memory is not None:
        after = f.memory.peak
        text = f"RSS <= {limit} after {f.memory.activations:,} activations"
        found.append(Target(text, f"{after / MB:.0f} MB", after <= RSS_TARGET))
    return found


def _all_rows(f: Figures) -> list[Measured]:
    return [*f.rpcs.values(), *f.history.values()]


def targets_lines(f: Figures) -> list[str]:
    lines = []
    for t in targets(f):
        state = "not measured" if t.met is None else "met" if t.met else "NOT met"
        lines.append(f"- {t.text}: {t.measured}, {state}")
    return lines


# --- output -----------------------------------------------------------------------


def markdown(f: Figures) -> str:
    args = " ".join(f.serve_args) or "(no extra flags)"
    seeded = ", ".join(f"{key} {value:,}" for key, value in f.seeded.items())
    parts = [
        f"## Keyturn licensing benchmark ({f.scale} scale)",
        "",
        f"Seeded: {seeded}. {f.duration_s:g} s per measurement after {f.warmup_s:g} s of "
        f"warm-up; {f.load_processes} load processes; keyturn serve {args}. "
        f"Run took {f.elapsed_s:.0f} s.",
        "",
        *rpc_table(f),
        "",
        f"History and hot entitlement ({f.history_in_flight} in flight, all calls on one "
        "entitlement):",
        "",
        *history_table(f),
        "",
        oversell_line(f),
        "",
        *pgbench_table(f),
        "",
        memory_line(f),
        "",
        "Targets (ratios measured in this run):",
        "",
        *targets_lines(f),
    ]
    return "\n".join(parts) + "\n"


def _measured_json(m: Measured) -> dict[str, Any]:
    return {
        "rpc": m.name,
        "in_flight": m.in_flight,
        "calls": m.load.calls,
        "calls_per_s": m.load.calls_per_s,
        "p50_ms": m.load.p50_s * 1000,
        "p99_ms": m.load.p99_s * 1000,
        "codes": m.load.codes,
        "window_s": m.load.window_s,
        "server_cpu_per_call_us": m.cpu_per_call_s * 1e6,
        "rss_bytes": list(m.rss),
    }


def to_json(f: Figures) -> dict[str, Any]:
    oversell = None
    if f.oversell is not None:
        oversell = {**asdict(f.oversell), "oversold": f.oversell.oversold}
    return {
        "scale": f.scale,
        "duration_s": f.duration_s,
        "warmup_s": f.warmup_s,
        "load_processes": f.load_processes,
        "serve_args": f.serve_args,
        "seeded": f.seeded,
        "echo": [_measured_json(m) for m in f.echo.values()],
        "rpcs": [_measured_json(m) for m in f.rpcs.values()],
        "history": [
            {**_measured_json(m), "entitlement": kind, "label": history_label(f, rpc, kind)}
            for (rpc, kind), m in f.history.items()
        ],
        "oversell": oversell,
        "pgbench": {key: asdict(result) for key, result in f.pgbench.items()},
        "memory": None
        if f.memory is None
        else {
            **_measured_json(f.memory.measured),
            "activations": f.memory.activations,
            "rss_before_bytes": list(f.memory.rss_before),
        },
        "pgbench_missing": f.pgbench_missing,
        "targets": [asdict(t) for t in targets(f)],
        "elapsed_s": f.elapsed_s,
    }


def write_json(f: Figures, path: Path) -> None:
    path.write_text(json.dumps(to_json(f), indent=2, allow_nan=True) + "\n")
