"""The Markdown report: the machine, the configuration, and a table with one section a measurement.

Each section is a function of the results (the figures the measurements returned, by key) giving
its rows; SECTIONS lists them in the table's order.
"""

from __future__ import annotations

import os
import platform
import subprocess
from contextlib import suppress
from pathlib import Path
from typing import Any

from stack import CLAUDE, REPO

Row = tuple[str, str, str, str, str]
HEADER: Row = ("Measurement", "Gateway", "Reference (same run)", "Ratio", "Target")


def machine() -> dict[str, str]:
    cpu = "unknown"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    version = subprocess.run([str(CLAUDE), "--version"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "claude": version,
        "commit": commit.stdout.strip() or "?",
    }


def fmt(value: float, unit: str = "") -> str:
    if value != value:  # NaN
        return "n/a"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "/s":
        return f"{value:,.1f}/s"
    return f"{value:.2f}{unit}"


def row(what: str, ours: str, reference: str = "", ratio: str = "", target: str = "") -> Row:
    return (what, ours, reference, ratio, target)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# --- the sections, in the table's order -----------------------------------------------------------


def latency_rows(r: dict[str, Any]) -> list[Row]:
    rest, b2b, bare = r["latency_rest"], r["latency_back_to_back"], r["bare_sequential"]
    ratio = rest["p50"] / bare["p50"]
    return [
        row(
            f"End-to-end latency p50, sequential at rest ({rest['n']} queries)",
            fmt(rest["p50"], "s"),
            f"bare CLI cold p50 {fmt(bare['p50'], 's')} ({bare['n']} runs)",
            f"{ratio:.2f}×",
            f"≤ 0.5× {verdict(ratio <= 0.5)}",
        ),
        row(
            "End-to-end latency p95, sequential at rest",
            fmt(rest["p95"], "s"),
            f"bare CLI cold p95 {fmt(bare['p95'], 's')}",
            f"{rest['p95'] / bare['p95']:.2f}×",
        ),
        row(
            f"End-to-end latency p50 / p95, back to back ({b2b['n']} queries)",
            f"{fmt(b2b['p50'], 's')} / {fmt(b2b['p95'], 's')}",
            f"bare CLI cold p50 {fmt(bare['p50'], 's')}",
            f"{b2b['p50'] / bare['p50']:.2f}×",
        ),
    ]


def burst_rows(r: dict[str, Any]) -> list[Row]:
    burst, par = r["burst"], r["bare_parallel"]
    ratio = burst["per_second"] / par["per_second"]
    return [
        row(
            f"Burst of {burst['n']} distinct queries, QUEUE_CONCURRENCY={r['config']['concurrency']}",
            fmt(burst["per_second"], "/s"),
            f"bare CLI, xargs -P{par['parallel']}: {fmt(par['per_second'], '/s')}",
            f"{ratio:.2f}×",
            f"≥ 0.95× {verdict(ratio >= 0.95)}",
        )
    ]


def cache_rows(r: dict[str, Any]) -> list[Row]:
    ours, ref, connections = r["cache_gateway"], r["cache_bare"], r["config"]["wrk_connections"]
    hit_ratio = ours["per_second"] / ref["per_second"]
    # Requests still in flight when wrk stops are answered and recorded, but not counted by wrk.
    every = (
        ours["requests"] <= ours["recorded"] <= ours["requests"] + connections
        and ours["non_2xx"] == 0
        and ours["socket_errors"] == 0
    )
    return [
        row(
            f"Cache hits, wrk {connections} connections",
            fmt(ours["per_second"], "/s"),
            f"bare Django view: {fmt(ref['per_second'], '/s')}",
            f"{hit_ratio:.2f}×",
            f"≥ 0.5× {verdict(hit_ratio >= 0.5)}",
        ),
        row(
            "Cache-hit latency p50 / p99",
            f"{fmt(ours['p50_ms'], 'ms')} / {fmt(ours['p99_ms'], 'ms')}",
            f"bare: {fmt(ref['p50_ms'], 'ms')} / {fmt(ref['p99_ms'], 'ms')}",
            "",
            f"p99 < 15 ms {verdict(ours['p99_ms'] < 15)}",
        ),
        *cpu_row(ours, ref),
        row(
            "Cache hits recorded (QueryRequest rows / answers)",
            f"{ours['recorded']:,} / {ours['requests']:,}",
            f"non-2xx {ours['non_2xx']}, socket errors {ours['socket_errors']}",
            "",
            f"every request {verdict(every)}",
        ),
    ]


def cpu_row(ours: dict[str, Any], ref: dict[str, Any]) -> list[Row]:
    """Web CPU per request (gunicorn and its workers): steadier than rates on a loaded machine."""
    mine, bare = ours.get("web_cpu_ms_per_request"), ref.get("web_cpu_ms_per_request")
    if not mine or not bare:
        return []
    return [
        row(
            "Web CPU per cache hit",
            f"{mine:.2f} ms",
            f"bare: {bare:.2f} ms",
            f"{mine / bare:.2f}×",
            "",
        )
    ]


def v1_cache_rows(r: dict[str, Any]) -> list[Row]:
    ours, native = r["v1_cache"]["v1_messages"], r["v1_cache"]["api_query"]
    ratio = ours["per_second"] / native["per_second"]
    clean = ours["non_2xx"] == 0 and ours["socket_errors"] == 0
    return [
        row(
            f"Cache hits, /v1/messages, wrk {r['config']['wrk_connections']} connections",
            fmt(ours["per_second"], "/s"),
            f"/api/query: {fmt(native['per_second'], '/s')}",
            f"{ratio:.2f}×",
            f"no errors {verdict(clean)}",
        ),
        row(
            "/v1/messages cache-hit latency p50 / p99",
            f"{fmt(ours['p50_ms'], 'ms')} / {fmt(ours['p99_ms'], 'ms')}",
            f"/api/query: {fmt(native['p50_ms'], 'ms')} / {fmt(native['p99_ms'], 'ms')}",
            "",
            "",
        ),
    ]


def submission_rows(r: dict[str, Any]) -> list[Row]:
    sub = r["submissions"]
    return [
        row(
            "Submissions missing the cache, no worker (wrk)",
            fmt(sub["per_second"], "/s"),
            f"p50 {fmt(sub['p50_ms'], 'ms')}, p99 {fmt(sub['p99_ms'], 'ms')}",
            "",
            f"jobs {sub['jobs_created']:,} / answers {sub['requests']:,}, non-2xx {sub['non_2xx']}",
        )
    ]


def cpu_rows(r: dict[str, Any]) -> list[Row]:
    cpu, par = r["burst"]["cpu_per_job"], r["bare_parallel"]
    gateway_cpu = cpu["web"] + cpu["worker_own"] + cpu["horses"]
    return [
        row(
            "Gateway CPU per job in the burst (web + rq worker + work horse)",
            f"{gateway_cpu * 1000:.1f} ms",
            f"web {cpu['web'] * 1000:.1f} + worker {cpu['worker_own'] * 1000:.1f}"
            f" + horse {cpu['horses'] * 1000:.1f} ms",
            f"{gateway_cpu / par['cpu_per_run']:.3f}× a bare run's CPU",
        ),
        row(
            "CLI CPU per job in the burst",
            f"{cpu['cli'] * 1000:.0f} ms",
            f"bare CLI under xargs -P{par['parallel']}: {par['cpu_per_run'] * 1000:.0f} ms per run",
            f"{cpu['cli'] / par['cpu_per_run']:.2f}×",
        ),
    ]


def pool_rows(r: dict[str, Any]) -> list[Row]:
    pool = r["pool"]
    return [
        row(
            "Warm pool: jobs that took a warm CLI / started cold",
            f"{pool['hits']} / {pool['misses']}",
            "jobs by intent: " + ", ".join(f"{k} {v}" for k, v in sorted(pool["intents"].items())),
        )
    ]


def conversation_rows(r: dict[str, Any]) -> list[Row]:
    c = r["conversation"]
    res, flat, n = c["resumed_summary"], c["flat_summary"], c["turns"]

    def per_turn(mode: str, key: str) -> str:
        return " ".join(str(t[key]) for t in c[mode])

    def tokens(turns: list[dict[str, Any]]) -> str:
        return " ".join(f"{t['input_tokens'] + t['cache_write']}+{t['cache_read']}r" for t in turns)

    return [
        row(
            f"Conversation of {n} turns: upstream request bytes, total",
            f"resumed {res['bytes_total']:,}",
            f"flat replay {flat['bytes_total']:,}",
            f"{res['bytes_total'] / flat['bytes_total']:.2f}×",
        ),
        row("Upstream bytes per turn, resumed", per_turn("resumed", "bytes"), "", ""),
        row("Upstream bytes per turn, flat replay", per_turn("flat", "bytes"), "", ""),
        row(
            f"Input tokens over {n} turns, uncached (input + cache writes) / cache reads",
            f"resumed {res['uncached_total']:,} / {res['cache_read_total']:,}",
            f"flat {flat['uncached_total']:,} / {flat['cache_read_total']:,}",
            f"{res['uncached_total'] / flat['uncached_total']:.2f}× uncached",
        ),
        row("Input tokens per turn (uncached+reads), resumed", tokens(c["resumed"])),
        row("Input tokens per turn (uncached+reads), flat replay", tokens(c["flat"])),
        row(
            "Billed input (1× + 1.25× cache writes + 0.1× reads), total",
            f"resumed {res['billed_input_total']:,.0f}",
            f"flat {flat['billed_input_total']:,.0f}",
            f"{res['billed_input_total'] / flat['billed_input_total']:.2f}×",
        ),
        row(
            "Latency of a later turn p50: resumed (cold CLI) / fresh (flat, warm CLI)",
            fmt(res["latency_p50_later"], "s"),
            fmt(flat["latency_p50_later"], "s"),
            f"{res['latency_p50_later'] / flat['latency_p50_later']:.2f}×",
            "how each turn ran: " + ",".join(m[:1] or "?" for m in res["modes"]),
        ),
    ]


MEMORY_LABELS = (
    ("web_workers", "gunicorn worker"),
    ("workers", "rq worker"),
    ("warm_clis", "warm CLI, with its children"),
)


def memory_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for name, label in MEMORY_LABELS:
        m = r["memory"][name]
        if m["count"]:
            rows.append(
                row(
                    f"Memory per {label} (×{m['count']})",
                    f"RSS {m['rss_mib_each']:.0f} MiB",
                    f"PSS {m['pss_mib_total'] / m['count']:.0f} MiB",
                )
            )
    if bare := r.get("bare_sequential"):
        rows.append(row("Bare CLI peak RSS per run", f"{bare['max_rss_mib']:.0f} MiB"))
    return rows


def first_token_rows(r: dict[str, Any]) -> list[Row]:
    rows_by_api, bare = r["first_token"], r["first_token"]["bare"]
    rows = []
    for name, figures in rows_by_api.items():
        if name == "bare":
            continue
        ratio = figures["p50"] / bare["p50"]
        rows.append(
            row(
                f"First streamed token p50, {name} ({figures['n']} queries)",
                fmt(figures["p50"], "s"),
                f"bare CLI cold first text delta p50 {fmt(bare['p50'], 's')} ({bare['n']} runs)",
                f"{ratio:.2f}×",
                f"≤ 0.3× {verdict(ratio <= 0.3)}",
            )
        )
    return rows


def stream_rows(r: dict[str, Any]) -> list[Row]:
    s = r["idle_streams"]
    held = s["opened"] == s["open_at_end"] == s["n"]
    rows = [
        row(
            f"Idle streams held open on queued jobs, {s['hold_s']:g} s",
            f"{s['open_at_end']:,} / {s['n']:,}",
            f"opened {s['opened']:,}",
            "",
            f"all {s['n']} {verdict(held)}",
        ),
        row(
            "Web RSS before / with the streams open / at the end",
            f"{s['web_rss_open_kib'] / 1024:.0f} MiB",
            f"before {s['web_rss_before_kib'] / 1024:.0f} MiB, end {s['web_rss_after_kib'] / 1024:.0f} MiB",
            f"+{(s['web_rss_open_kib'] - s['web_rss_before_kib']) / max(s['n'], 1):.0f} KiB/stream",
            "",
        ),
    ]
    if "cache_gateway" in r:
        base = r["cache_gateway"]["per_second"]
        ratio = s["cache_hits_per_second"] / base
        rows.append(
            row(
                "Cache hits on /api/query with the streams open",
                fmt(s["cache_hits_per_second"], "/s"),
                f"without them: {fmt(base, '/s')}",
                f"{ratio:.2f}×",
                f"≥ 0.9× {verdict(ratio >= 0.9)}",
            )
        )
        before, during = r["cache_gateway"].get("web_cpu_ms_per_request"), s.get("web_cpu_ms_per_hit")
        if before and during:
            rows.append(
                row(
                    "Web CPU per cache hit with the streams open",
                    f"{during:.2f} ms",
                    f"without them: {before:.2f} ms",
                    f"{during / before:.2f}×",
                    "",
                )
            )
    return rows


# The sections in the table's order, each with the figures it needs (None: every run has them): a
# measurement left out (--only) gives no rows.
SECTIONS = (
    ("latency_rest", latency_rows),
    ("burst", burst_rows),
    ("cache_gateway", cache_rows),
    ("v1_cache", v1_cache_rows),
    ("submissions", submission_rows),
    ("first_token", first_token_rows),
    ("idle_streams", stream_rows),
    ("burst", cpu_rows),
    ("pool", pool_rows),
    ("conversation", conversation_rows),
    (None, memory_rows),
)


# --- the page ------------------------------------------------------------------------------------------


def table(rows: list[Row]) -> list[str]:
    widths = [max(len(str(x[i])) for x in [HEADER, *rows]) for i in range(5)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)) + " |" for x in rows]
    return lines


def intro(r: dict[str, Any]) -> list[str]:
    m, c = r["machine"], r["config"]
    return [
        f"# Gateway benchmark, {r['finished_at']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, Linux {m['kernel']}, Python {m['python']},"
        f" {m['claude']}; commit {m['commit']}.",
        f"Load average at start {r['load_start']}, at end {r['load_end']}.",
        f"Config: QUEUE_CONCURRENCY={c['concurrency']}, CLAUDE_POOL_SIZE={c['pool_size']},"
        f" jobs {'in forked work horses' if c.get('worker_fork') else 'in the worker processes'},"
        f" WEB_CONCURRENCY={c['web_concurrency'] or 'default'}, WEB_THREADS={c['web_threads'] or 'default'},"
        f" worker class {c['web_worker_class'] or 'gunicorn.conf.py'}; wrk -t{c['wrk_threads']}"
        f" -c{c['wrk_connections']} -d{c['wrk_duration']}s;"
        f" job rows polled every {c['poll_interval'] * 1000:g} ms, then the result read through the API.",
        "",
    ]


def report(results: dict[str, Any]) -> str:
    rows = [x for needs, section in SECTIONS if needs is None or needs in results for x in section(results)]
    return "\n".join(intro(results) + table(rows)) + "\n"
