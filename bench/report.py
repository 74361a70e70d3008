#!/usr/bin/env python3
"""Glue for bench/run: measures the logical size of an NDJSON data set, and renders the
run's facts and load-generator reports into RESULTS.md and results.json."""
import json
import pathlib
import sys


def field_bytes(v):
    """Meaningful bytes of a JSON value: text as UTF-8, numbers 8, booleans 1; keys and JSON
    punctuation are not data."""
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, bool):
        return 1
    if isinstance(v, (int, float)):
        return 8
    if isinstance(v, list):
        return sum(field_bytes(x) for x in v)
    if isinstance(v, dict):
        return sum(field_bytes(x) for x in v.values())
    return 0


def logical(path):
    ndjson = fields = lines = 0
    with open(path, "rb") as f:
        for line in f:
            ndjson += len(line)
            if line.strip():
                lines += 1
                fields += field_bytes(json.loads(line))
    print(json.dumps({"ndjson_bytes": ndjson, "field_bytes": fields, "lines": lines}))


def fmt(x, digits=0):
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def render(work, out):
    work, out = pathlib.Path(work), pathlib.Path(out)
    facts = {}
    for line in (work / "facts.jsonl").read_text().splitlines():
        d = json.loads(line)
        facts[d["k"]] = d["v"]
    runs = {}
    for p in sorted((work / "json").glob("*.json")):
        runs[p.stem] = json.loads(p.read_text())

    def rps(name):
        return runs.get(name, {}).get("throughput_rps")

    def echo_max():
        xs = [x for x in (rps("echo"), rps("echo-2")) if x]
        return max(xs) if xs else None

    def p99(name):
        return runs.get(name, {}).get("latency_us", {}).get("p99")

    def p99_median(prefix):
        xs = sorted(p99(k) for k in runs if k.startswith(prefix) and p99(k) is not None)
        return xs[len(xs) // 2] if xs else None

    def ratio(a, b):
        return a / b if a is not None and b else None

    def median(prefix):
        xs = sorted(v for k, v in facts.items() if k.startswith(prefix))
        return xs[len(xs) // 2] if xs else None

    lg = facts.get("logical") if isinstance(facts.get("logical"), dict) else None
    logical_bytes = lg["field_bytes"] if lg else None
    rss_bytes = facts["rss_max_kib"] * 1024 if isinstance(facts.get("rss_max_kib"), (int, float)) else None
    ri_flushes = facts.get("ri_flushes") or 0
    wpf = facts["ri_commits"] / ri_flushes if ri_flushes else None
    clean, kill9 = median("restart_clean_ms_"), median("restart_kill9_ms_")
    flood = runs.get("flood", {})
    recovery = (flood.get("recovery") or {}).get("recovery_ms")
    kib = lambda k: facts[k] * 1024 if isinstance(facts.get(k), (int, float)) else None
    flood_rss, flood_bound = kib("flood_rss_max_kib"), kib("flood_rss_bound_kib")

    # (goal, measured, baseline, ratio, target, higher_is_better)
    goals = [
        ("1. GetProfile max throughput vs echo (the higher of its two runs)", rps("get-by-id"),
         echo_max(), ratio(rps("get-by-id"), echo_max()), 0.70, True, "req/s"),
        ("2. GetProfile p99 at 50 % of its max rate vs echo p99 at that rate", p99("get-by-id-open"),
         p99("echo-open"), ratio(p99("get-by-id-open"), p99("echo-open")), 2.0, False, "µs"),
        ("3a. Resolve (lookup) max throughput vs echo (the higher of its two runs)", rps("resolve"),
         echo_max(), ratio(rps("resolve"), echo_max()), 0.60, True, "req/s"),
        (f"3b. Resolve p99 at {fmt(facts.get('profiles'))} profiles vs at {fmt(facts.get('small_profiles'))} "
         f"(same rate; medians of {fmt(facts.get('resolve_p99_reps'))} alternated runs on fresh servers)",
         p99_median("resolve-open-full-"), p99_median("resolve-open-small-"),
         ratio(p99_median("resolve-open-full-"), p99_median("resolve-open-small-")), 1.5, False, "µs"),
        ("4a. Durable RecordInteraction, 64 writers (absolute goal 5,000/s)", rps("record-interaction"),
         5000.0, ratio(rps("record-interaction"), 5000.0), 1.0, True, "writes/s"),
        ("4b. Writes per flush during that run (goal ≥ 10)", wpf, 10.0, ratio(wpf, 10.0), 1.0, True, "writes/flush"),
        ("5a. Server RSS (max sampled) vs logical bytes", rss_bytes, logical_bytes,
         ratio(rss_bytes, logical_bytes), 2.0, False, "bytes"),
        ("5b. Data directory after import vs logical bytes", facts.get("data_dir_after_import_bytes"),
         logical_bytes, ratio(facts.get("data_dir_after_import_bytes"), logical_bytes), 2.5, False, "bytes"),
        ("5c. Data directory after updates + erasures vs logical bytes", facts.get("data_dir_after_churn_bytes"),
         logical_bytes, ratio(facts.get("data_dir_after_churn_bytes"), logical_bytes), 2.5, False, "bytes"),
        ("6. Import (goal 20,000 profiles/s)", facts.get("import_profiles_per_s"), 20000.0,
         ratio(facts.get("import_profiles_per_s"), 20000.0), 1.0, True, "profiles/s"),
        ("7. Restart to SERVING: kill -9 vs clean stop (median)", kill9, clean, ratio(kill9, clean), 2.0, False, "ms"),
        ("8a. Flood (4× max): admitted GetProfile p99 vs p99 at 50 % load", p99("flood"), p99("get-by-id-open"),
         ratio(p99("flood"), p99("get-by-id-open")), 3.0, False, "µs"),
        ("8b. Flood: server RSS (max sampled) vs bound (RSS after a warm-up + 128 MiB)", flood_rss, flood_bound,
         ratio(flood_rss, flood_bound), 1.0, False, "bytes"),
        ("8c. Flood: serving normally again after the flood (goal 1,000 ms)", recovery,
         1000.0, ratio(recovery, 1000.0), 1.0, False, "ms"),
    ]
    goal_rows = []
    for name, measured, base, r, target, higher, unit in goals:
        verdict = "n/a" if r is None else ("PASS" if (r >= target if higher else r <= target) else "MISS")
        goal_rows.append({"goal": name, "measured": measured, "baseline": base, "ratio": r,
                          "target": ("≥ " if higher else "≤ ") + str(target), "unit": unit, "verdict": verdict})

    errors_total = sum(sum(r.get("errors", {}).values()) for r in runs.values())
    result = {"facts": facts, "runs": runs, "goals": goal_rows, "errors_total": errors_total,
              "all_runs_valid": all(not r.get("not_a_result") for r in runs.values()) and bool(runs)}
    (out / "results.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")

    echo = echo_max()
    L = []
    L.append(f"# Benchmark results — {fmt(facts.get('profiles'))} profiles")
    L.append("")
    L.append("Generated by `bench/run` (see README, section Benchmark). Absolute numbers on a shared "
             "machine are noise; the ratios against baselines measured in the same run are the result.")
    L.append("")
    if facts.get("build_profile") == "debug":
        L.append("**Debug build (`--debug`): this run only checks that the harness works; its "
                 "figures are not results.**")
        L.append("")
    L.append("## Machine and run")
    L.append("")
    for k in ["date", "commit", "command", "nproc", "cpu", "ram_mib", "kernel", "pinning", "data_path",
              "profiles", "small_profiles", "identifiers_full", "identifiers_small", "duration_s",
              "warmup_s", "concurrency", "open_loop_connections", "build_profile", "reply_bytes", "open_rate_get", "open_rate_resolve"]:
        if k in facts:
            L.append(f"- **{k}**: {fmt(facts[k], 1) if isinstance(facts[k], float) else facts[k]}")
    L.append("")
    L.append("## Goals")
    L.append("")
    L.append("| goal | measured | baseline | ratio | target | verdict |")
    L.append("|---|---:|---:|---:|---|---|")
    for g in goal_rows:
        L.append(f"| {g['goal']} | {fmt(g['measured'])} {g['unit']} | {fmt(g['baseline'])} | "
                 f"{fmt(g['ratio'], 2)} | {g['target']} | {g['verdict']} |")
    L.append("")
    L.append("## Every run")
    L.append("")
    L.append("Latency in µs. Closed loop: back to back, latency from send. Open loop: fixed rate, "
             "latency from the intended send time (coordinated omission corrected). Client: tonic's, "
             "or the load generator's lean HTTP/2 client (`lean-h2`: pre-encoded requests, status "
             "read, reply not decoded), used for the runs compared at half load and the flood.")
    L.append("")
    L.append("| run | mode | client | conc. | req/s | vs echo | p50 | p90 | p99 | p99.9 | max | n | errors | labels |")
    L.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for name, r in runs.items():
        l = r["latency_us"]
        errs = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        if r.get("not_a_result"):
            errs += " **NOT A RESULT**"
        vs = fmt(ratio(r["throughput_rps"], echo), 2) if r["mode"] == "closed" else ""
        labels = ", ".join(f"{k}: {v}" for k, v in r.get("labels", {}).items())
        L.append(f"| {name} | {r['mode']} | {r.get('client', 'tonic')} | {r['concurrency']} | {fmt(r['throughput_rps'])} | {vs} | "
                 f"{fmt(l['p50'])} | {fmt(l['p90'])} | {fmt(l['p99'])} | {fmt(l['p999'])} | "
                 f"{fmt(l['max'])} | {fmt(r['count'])} | {errs} | {labels} |")
    L.append("")
    L.append("## Sizes, memory, restarts")
    L.append("")
    if lg:
        L.append(f"- Logical bytes (definition: the sum of the meaningful field bytes of the NDJSON input — "
                 f"text values as UTF-8, numbers 8 bytes, booleans 1; keys and JSON punctuation excluded): "
                 f"{fmt(lg['field_bytes'])}; the NDJSON file itself: {fmt(lg['ndjson_bytes'])} bytes, "
                 f"{fmt(lg['lines'])} lines.")
    else:
        L.append("- Logical bytes: not measured (data loaded over gRPC, no NDJSON input).")
    churn, audit_log = facts.get("data_dir_after_churn_bytes"), facts.get("audit_log_after_churn_bytes")
    if churn and audit_log is not None and lg:
        L.append(f"- Of the data directory after updates + erasures (5c), the audit log is {fmt(audit_log)} bytes "
                 f"(an entry per call of every scenario run before); without it, {fmt(churn - audit_log)} bytes, "
                 f"{ratio(churn - audit_log, lg['field_bytes']):.2f}× the logical bytes. The goal counts the whole "
                 f"directory.")
    for k in ["data_dir_after_import_bytes", "data_dir_after_churn_bytes", "audit_log_after_churn_bytes",
              "data_dir_after_restarts_bytes",
              "store_size_metric_bytes", "rss_max_kib", "rss_last_kib", "import_seconds",
              "import_profiles_per_s", "seed_profiles_per_s", "ri_commits", "ri_flushes",
              "store_writes_per_flush_metric"]:
        if k in facts:
            L.append(f"- {k}: {fmt(facts[k], 1)}")
    rs = sorted(k for k in facts if k.startswith("restart_"))
    if rs:
        L.append("- restarts (ms to SERVING): " + ", ".join(f"{k[8:]} {facts[k]}" for k in rs))
    L.append("")
    if flood:
        L.append("## Overload: GetProfile offered at 4× its maximum rate")
        L.append("")
        L.append("Open loop with `--shed-ok`: RESOURCE_EXHAUSTED is the expected answer to the excess and "
                 "is counted as shed, not as an error; latency percentiles are of admitted calls, from "
                 "the intended send time.")
        L.append("")
        rec = flood.get("recovery") or {}
        shed_l = flood.get("shed_latency_us") or {}
        due, on_time = flood.get("due"), flood.get("sent_on_time")
        rows = [
            ("offered rate (the schedule)", f"{fmt(flood.get('offered_rps'))} req/s "
             f"(4 × {fmt(facts.get('flood_max_rps') or rps('get-by-id'))}, the higher of GetProfile's maximum and the flood's warm-up, {fmt(facts.get('flood_duration_s'))} s measured)"),
            ("sent on time by the load generator", f"{fmt(on_time)} of {fmt(due)} "
             f"({fmt(ratio(on_time, due) * 100 if ratio(on_time, due) is not None else None, 1)} %)"),
            ("admitted rate (OK replies)", f"{fmt(flood.get('throughput_rps'))} req/s"),
            ("shed (RESOURCE_EXHAUSTED)", f"{fmt(flood.get('shed'))} calls, p50 {fmt(shed_l.get('p50'))} µs, "
             f"p99 {fmt(shed_l.get('p99'))} µs; server counted {fmt(facts.get('flood_shed_server'))}"),
            ("other errors", ", ".join(f"{k}: {v}" for k, v in flood.get("errors", {}).items()) or "0"),
            ("admitted p50 / p99 / max", f"{fmt(flood['latency_us']['p50'])} / {fmt(flood['latency_us']['p99'])} / "
             f"{fmt(flood['latency_us']['max'])} µs"),
            ("p99 at 50 % load (same server, before the flood)", f"{fmt(p99('get-by-id-open'))} µs; goal: admitted "
             f"p99 ≤ 3 × = {fmt((p99('get-by-id-open') or 0) * 3)} µs"),
            ("server RSS cold (just started) / before (after a closed-loop warm-up) / max during / bound",
             f"{fmt(facts.get('flood_rss_cold_kib'))} / {fmt(facts.get('flood_rss_before_kib'))} / "
             f"{fmt(facts.get('flood_rss_max_kib'))} / {fmt(facts.get('flood_rss_bound_kib'))} KiB"),
            ("recovery (from the schedule's end to the first of 20 calls in a row OK within "
             f"{fmt(rec.get('threshold_ms'), 1)} ms)", f"{fmt(recovery, 1)} ms ({fmt(rec.get('probe_calls'))} probe calls, "
             f"{fmt(rec.get('probe_shed'))} shed); goal ≤ 1,000 ms"),
            ("server stayed up (health SERVING after the flood)", str(facts.get("flood_server_up", "n/a"))),
        ]
        L.append("| | |")
        L.append("|---|---|")
        for k, v in rows:
            L.append(f"| {k} | {v} |")
        L.append("")
    L.append("## Reference: redis-benchmark GET (same concurrency, value of the reply size)")
    L.append("")
    L.append(f"`{facts.get('redis_command', '')}`: {facts.get('redis_csv', 'n/a')}")
    L.append("")
    L.append("## What limits these numbers")
    L.append("")
    L.append("- The machine has few cores shared by the load generator and the servers. With pinning "
             "on, customer-profile, the echo baseline and redis each get CPU 1 alone and the load "
             "generator CPU 0, so every ratio compares like with like; a single-core server runtime "
             "is the limit for every read scenario, and the load generator's core can be the limit "
             "for the echo baseline (then the echo ratios flatter the service).")
    L.append("- Durable writes wait for group commit (flush + fdatasync): their rate is bounded by "
             "the disk's sync latency times the writers that share one flush.")
    if flood:
        due, on_time = flood.get("due") or 0, flood.get("sent_on_time") or 0
        if due and on_time / due < 0.9:
            L.append(f"- The flood was not fully offered: the load generator sent only {on_time / due * 100:.1f} % "
                     "of its calls within 1 ms of their due time (one core, shared, cannot produce the rate); "
                     "calls it sent late count their lateness as latency, so the admitted p99 then "
                     "measures the load generator's backlog as much as the server.")
    if rps("echo") and rps("echo-2"):
        lo, hi = sorted([rps("echo"), rps("echo-2")])
        L.append(f"- The echo baseline's two runs measured {fmt(rps('echo'))} and {fmt(rps('echo-2'))} "
                 f"calls/s ({(hi / lo - 1) * 100:.0f} % apart); ratios use the higher. A spread of more "
                 "than a few per cent means a neighbour took the core during the run, and every "
                 "throughput ratio of this run is that uncertain.")
    if flood and echo_max() and (flood.get("offered_rps") or 0) > echo_max():
        L.append(f"- The flood's schedule ({fmt(flood.get('offered_rps'))}/s) is above what the bare echo "
                 f"server answers at most on the same core ({fmt(echo_max())}/s): every call, refused or "
                 "served, is read, routed and answered over HTTP/2, so at this rate the server's core is "
                 "saturated by the exchange alone, whatever the service does. Goal 8a then measures the "
                 "machine more than the service; the faster GetProfile gets, the further 4× its maximum "
                 "lies beyond that line.")
    L.append(f"- Errors in any run: {errors_total}. A run with errors is marked NOT A RESULT.")
    L.append("")
    (out / "RESULTS.md").write_text("\n".join(L))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "logical":
        logical(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "render":
        render(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: report.py logical FILE.ndjson | render WORK_DIR OUT_DIR")
