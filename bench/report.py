"""The Markdown report: the machine, the configuration, and a table with one section a measurement.

Each section is a function of the results (the figures the measurements returned, by key) giving
its rows; SECTIONS lists them in the table's order.
"""

from __future__ import annotations

import os
import platform
import statistics
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


# The waiting clients' targets, as a fraction of the bare CLI's cold p50: at rest, back to back.
WAITING_TARGETS = {"rest": 0.15, "back_to_back": 0.3}
WAITING_MODES = {"rest": "at rest", "back_to_back": "back to back"}


def waiting_rows(r: dict[str, Any], key: str = "waiting", label: str = "") -> list[Row]:
    bare = r.get("bare_sequential")
    rows = []
    for name, modes in r[key]["clients"].items():
        for mode, figures in modes.items():
            target = WAITING_TARGETS[mode]
            ratio = figures["p50"] / bare["p50"] if bare else float("nan")
            failed = f", {figures['failed']} failed" if figures["failed"] else ""
            rows.append(
                row(
                    f"E2E p50 / p95{label}, {name}, {WAITING_MODES[mode]} ({figures['n']} queries{failed})",
                    f"{fmt(figures['p50'], 's')} / {fmt(figures['p95'], 's')}",
                    f"bare CLI cold p50 {fmt(bare['p50'], 's')}" if bare else "",
                    f"{ratio:.2f}×",
                    f"≤ {target:g}× {verdict(ratio <= target)}",
                )
            )
    steps = r[key]["breakdown"]
    rest, b2b = steps.get("rest", {}), steps.get("back_to_back", {})
    for step in rest:
        rows.append(
            row(
                f"  step p50{label}: {step}",
                f"{fmt(rest[step]['p50_ms'], 'ms')} at rest (n {rest[step]['n']})",
                f"{fmt(b2b[step]['p50_ms'], 'ms')} back to back" if step in b2b else "",
            )
        )
    return rows


def recovery_rows(r: dict[str, Any]) -> list[Row]:
    rec = r["recovery"]
    rows = [
        row(
            "Recovery: SIGKILL of an rq worker and its CLIs",
            f"warm pool ready again after {fmt(rec['worker_heal_s'], 's')}"
            if rec["worker_heal_s"] is not None
            else "warm pool NOT ready again",
            f"warm CLIs {rec['warm_before']} before, {rec['warm_after_kill']} after",
        ),
        row(
            "Recovery: the benchmark's Redis restarted (empty)",
            f"warm pool ready after {fmt(rec['redis_heal_s'], 's')}"
            if rec["redis_heal_s"] is not None
            else "warm pool NOT ready again",
            f"rq workers registered {rec['registered_before']} before, {rec['registered_after']} after",
        ),
        row("claude_cli_pool_* before", ", ".join(rec["pool_metrics_before"]) or "none"),
        row("claude_cli_pool_* after the recovery runs", ", ".join(rec["pool_metrics_after"]) or "none"),
    ]
    return rows + waiting_rows({**r, "recovered": rec["waiting"]}, "recovered", " after recovery")


def burst_rows(r: dict[str, Any]) -> list[Row]:
    """One row per way of running the workers (bench/burst.py), the stack's own way first."""
    par, concurrency = r["bare_parallel"], r["config"]["concurrency"]
    modes = r.get("burst_modes") or {r["config"].get("workers", "pool"): {"median": r["burst"]}}
    first = r["config"].get("workers", "pool")
    rows = []
    for mode in sorted(modes, key=lambda m: m != first):
        burst = modes[mode]["median"]
        runs = burst.get("all_per_second", [burst["per_second"]])
        reference = f"bare CLI, xargs -P{par['parallel']}: {fmt(par['per_second'], '/s')}"
        ratio = burst["per_second"] / par["per_second"]
        if len(runs) > 1:
            reference += f" before the gateway started; bursts {', '.join(f'{x:.2f}' for x in runs)}/s"
        if (ratios := burst.get("all_ratios")) and len(ratios) > 1:
            # Each burst against the bare run of its own round, moments apart: the median of those.
            ratio = statistics.median(ratios)
            reference += f", each against its round's bare run {', '.join(f'{x:.2f}×' for x in ratios)}"
        rows.append(
            row(
                f"Burst of {burst['n']} distinct queries, QUEUE_CONCURRENCY={concurrency},"
                f" {WORKER_LABELS.get(mode, mode)}",
                fmt(burst["per_second"], "/s") + (" (median)" if len(runs) > 1 else ""),
                reference,
                f"{ratio:.2f}×" + (" (median)" if ratios and len(ratios) > 1 else ""),
                f"≥ 1.0× {verdict(ratio >= 1.0)}",
            )
        )
        if phases := burst.get("phases"):
            rows.append(
                row(
                    f"  its jobs ({WORKER_LABELS.get(mode, mode)}): queue wait p50 / run mean / gap"
                    " between a worker's jobs mean (max)",
                    f"{phases['wait_p50']:.3f} s / {phases['run_mean']:.3f} s / "
                    f"{phases['gap_mean'] * 1000:.1f} ms ({phases['gap_max'] * 1000:.0f} ms)",
                    f"workers busy {phases['busy']:.0%} of the burst, jobs per worker"
                    f" {'/'.join(str(x) for x in phases['jobs_per_worker'])}",
                )
            )
        if memory := burst.get("workers_memory"):
            rows.append(
                row(
                    f"  its worker processes at rest ({WORKER_LABELS.get(mode, mode)}), RSS / PSS in all",
                    f"{memory['rss_mib_total']:.0f} MiB / {memory['pss_mib_total']:.0f} MiB",
                    f"{memory['processes']} processes (the warm CLIs apart)",
                )
            )
    return rows


WORKER_LABELS = {"pool": "rqworker-pool", "separate": "separate rqworker processes"}


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
            f"≥ 1.0× {verdict(hit_ratio >= 1.0)}",
        ),
        row(
            "Cache-hit latency p50 / p99",
            f"{fmt(ours['p50_ms'], 'ms')} / {fmt(ours['p99_ms'], 'ms')}",
            f"bare: {fmt(ref['p50_ms'], 'ms')} / {fmt(ref['p99_ms'], 'ms')}",
            f"p99 {ours['p99_ms'] / ref['p99_ms']:.2f}×",
            f"p99 ≤ 1.2× {verdict(ours['p99_ms'] <= 1.2 * ref['p99_ms'])}",
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
    par, first = r["bare_parallel"], r["config"].get("workers", "pool")
    modes = r.get("burst_modes") or {first: {"median": r["burst"]}}
    rows = []
    for mode in sorted(modes, key=lambda m: m != first):
        cpu = modes[mode]["median"]["cpu_per_job"]
        label = WORKER_LABELS.get(mode, mode)
        gateway_cpu = cpu["web"] + cpu["worker_own"] + cpu["horses"]
        rows += [
            row(
                f"Gateway CPU per job in the burst (web + rq worker + work horse), {label}",
                f"{gateway_cpu * 1000:.1f} ms",
                f"web {cpu['web'] * 1000:.1f} + worker {cpu['worker_own'] * 1000:.1f}"
                f" + horse {cpu['horses'] * 1000:.1f} ms"
                + (f"; PostgreSQL backends {cpu['postgres'] * 1000:.1f} ms" if "postgres" in cpu else ""),
                f"{gateway_cpu / par['cpu_per_run']:.3f}× a bare run's CPU",
            ),
            row(
                f"CLI CPU per job in the burst, {label}",
                f"{cpu['cli'] * 1000:.0f} ms",
                f"bare CLI under xargs -P{par['parallel']}: {par['cpu_per_run'] * 1000:.0f} ms per run",
                f"{cpu['cli'] / par['cpu_per_run']:.2f}×",
            ),
        ]
    return rows


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
    ("waiting", waiting_rows),
    ("recovery", recovery_rows),
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
        f" {c.get('workers', 'pool')} workers, jobs"
        f" {'in forked work horses' if c.get('worker_fork') else 'in the worker processes'},"
        f" WEB_CONCURRENCY={c['web_concurrency'] or 'default'}, WEB_THREADS={c['web_threads'] or 'default'},"
        f" worker class {c['web_worker_class'] or 'gunicorn.conf.py'}; wrk -t{c['wrk_threads']}"
        f" -c{c['wrk_connections']} -d{c['wrk_duration']}s;"
        f" job rows polled every {c['poll_interval'] * 1000:g} ms, then the result read through the API.",
        "",
    ]


def report(results: dict[str, Any]) -> str:
    rows = [x for needs, section in SECTIONS if needs is None or needs in results for x in section(results)]
    return "\n".join(intro(results) + table(rows)) + "\n"
