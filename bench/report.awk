# Prints the ratio table of BENCHMARKS.md from the two programs' output.
#
#   awk -f bench/report.awk micro.csv load.jsonl
#
# micro.csv: pm_micro's --benchmark_out (CSV) with repetitions, whose
# *_median rows are read; load.jsonl: pm_load's stdout. Plain POSIX awk
# (Debian's default mawk), so that `make bench` needs nothing more.
# Exits 1 when a target is missed and STRICT=1 is set.

function field(line, key,    re, s) {
  re = "\"" key "\":\"?[^,\"}]*"
  if (!match(line, re)) return ""
  s = substr(line, RSTART + length(key) + 3, RLENGTH - length(key) - 3)
  sub(/^"/, "", s)
  return s
}

function row(figure, measured, target, ok) {
  printf "| %-58s | %-32s | %-7s | %-4s |\n", figure, measured, target, ok ? "met" : "MISSED"
  if (!ok) missed++
}

function ratio_row(figure, s, n, target,    p, b, r) {
  if (!((s, "pm", n, 1) in load) || !((s, "asio-baseline", n, 1) in load)) {
    printf "| %-58s | %-32s | %-7s | %-4s |\n", figure, "not measured", sprintf("<= %.2f", target), "-"
    return
  }
  p = load[s, "pm", n, 1]
  b = load[s, "asio-baseline", n, 1]
  if (b <= 0) b = 1e-9
  r = p / b
  row(figure, sprintf("%.2fx (%.4g vs %.4g)", r, p, b), sprintf("<= %.2f", target), r <= target)
}

FNR == 1 { file++ }

file == 1 && /_median"/ {
  split($0, c, ",")
  name = c[1]
  gsub(/"/, "", name)
  sub(/_median$/, "", name)
  sub(/\/real_time$/, "", name)
  micro[name] = c[3] + 0
  unit[name] = c[5]
}

file == 2 && /"scenario"/ {
  s = field($0, "scenario"); i = field($0, "impl"); n = field($0, "n"); t = field($0, "threads")
  if (field($0, "prefault") == "true") s = s "+prefault"
  if (field($0, "sharded") == "true") t = t "s"  # "2s": two threads, one io_context each
  v = field($0, "ms")
  if (v == "") v = field($0, "bytes_per_service")
  if (v == "") v = field($0, "per_s")
  load[s, i, n, t] = v + 0
  cm = field($0, "cpu_ms")
  if (cm != "") cpu[s, i, n, t] = cm + 0
  seen_n[n] = 1
  seen_t[t] = 1
  scen[s] = 1
}

END {
  missed = 0
  print ""
  print "Targets (BENCHMARKS.md), one io_context thread, medians"
  print ""
  printf "| %-58s | %-32s | %-7s | %-4s |\n", "figure", "measured", "target", ""
  printf "| %-58s | %-32s | %-7s | %-4s |\n", "---", "---", "---", "---"
  if (("BM_RawPostDeferred" in micro) && ("BM_TickPost" in micro)) {
    # Like for like: the tick awaits its post as a deferred async operation.
    r = micro["BM_TickPost"] / micro["BM_RawPostDeferred"]
    row("BM_TickPost / BM_RawPostDeferred", sprintf("%.2f (%.0f / %.0f ns)", r, micro["BM_TickPost"],
        micro["BM_RawPostDeferred"]), "<= 1.15", r <= 1.15)
    r = (micro["BM_TickAwaitable"] - micro["BM_RawAwaitable"]) / micro["BM_RawPostDeferred"]
    row("(BM_TickAwaitable - BM_RawAwaitable) / BM_RawPostDeferred",
        sprintf("%.2f ((%.1f - %.1f) / %.0f ns)", r, micro["BM_TickAwaitable"], micro["BM_RawAwaitable"],
                micro["BM_RawPostDeferred"]), "<= 1.0", r <= 1.0)
  }
  if (("BM_RawTimerCancelRoundTrip" in micro) && ("BM_ControlRoundTrip" in micro)) {
    # Like for like: a message that cancels a service's timer wait.
    r = micro["BM_ControlRoundTrip"] / micro["BM_RawTimerCancelRoundTrip"]
    row("BM_ControlRoundTrip / BM_RawTimerCancelRoundTrip",
        sprintf("%.2f (%.0f / %.0f ns)", r, micro["BM_ControlRoundTrip"], micro["BM_RawTimerCancelRoundTrip"]),
        "<= 1.5", r <= 1.5)
  }
  if (("BM_RawCoSpawn" in micro) && ("BM_ScopeSpawn" in micro)) {
    # A sub-task spawned, run and completed: in a TaskScope, or by a co_spawn
    # with the cancellation signal and completion handler a scope needs.
    r = micro["BM_ScopeSpawn"] / micro["BM_RawCoSpawn"]
    row("BM_ScopeSpawn / BM_RawCoSpawn", sprintf("%.2f (%.0f / %.0f ns)", r, micro["BM_ScopeSpawn"],
        micro["BM_RawCoSpawn"]), "<= 1.3", r <= 1.3)
  }
  # BENCHMARKS.md's like-for-like targets, at every N.
  split("1000 10000 100000", every, " ")
  for (k = 1; k <= 3; k++) ratio_row("startup, prefaulted, N = " every[k], "startup+prefault", every[k], 1.25)
  for (k = 1; k <= 3; k++) ratio_row("shutdown, N = " every[k], "shutdown", every[k], 1.25)
  for (k = 1; k <= 3; k++) ratio_row("reload (vs a message to N waiters), N = " every[k], "reload", every[k], 1.25)
  for (k = 1; k <= 3; k++) ratio_row("failure (vs one throws, rest stopped), N = " every[k], "failure", every[k], 1.5)
  for (k = 1; k <= 3; k++) ratio_row("memory per idle service, N = " every[k] " (bytes)", "memory", every[k], 1.5)
  if ((("restart", "pm", 1, 1) in load) && (("restart", "asio-baseline", 1, 1) in load) && load["restart", "pm", 1, 1] > 0) {
    # Restarts per second: higher is better, so the baseline over the library.
    r = load["restart", "asio-baseline", 1, 1] / load["restart", "pm", 1, 1]
    row("restart churn, logging off: bare / pm restarts per second",
        sprintf("%.2fx (%.0f vs %.0f /s)", r, load["restart", "asio-baseline", 1, 1], load["restart", "pm", 1, 1]),
        "<= 3.0", r <= 3.0)
  }
  # Sharded (one io_context per thread) against the library on one thread.
  split("startup shutdown reload", sharded_scen, " ")
  for (k = 1; k <= 3; k++) {
    s = sharded_scen[k]
    if (!((s, "pm", 100000, "2s") in load) || !((s, "pm", 100000, 1) in load)) continue
    r = load[s, "pm", 100000, "2s"] / load[s, "pm", 100000, 1]
    row(s ", N = 100000: 2 shards / 1 thread (pm)",
        sprintf("%.2f (%.4g vs %.4g)", r, load[s, "pm", 100000, "2s"], load[s, "pm", 100000, 1]), "<= 0.70", r <= 0.7)
  }
  lo = ""; hi = ""; txt = ""
  split("1000 10000 100000", cn, " ")
  for (k = 1; k <= 3; k++) {
    if (!(("churn", "pm", cn[k], 1) in load)) continue
    v = load["churn", "pm", cn[k], 1]
    per = v * 1000 / cn[k]
    txt = txt (txt == "" ? "" : " / ") sprintf("%.2f", per)
    if (lo == "" || per < lo) lo = per
    if (hi == "" || per > hi) hi = per
  }
  if (lo != "") row("churn: us per child, N = 1000 / 10000 / 100000 (max/min)", sprintf("%s (%.2f)", txt, hi / lo),
                    "<= 1.5", hi / lo <= 1.5)

  if (("BM_RawPost" in micro) && ("BM_RawCrossThreadPost" in micro)) {
    print ""
    print "Against the earlier baselines, which do less (information, no target)"
    print ""
    printf "| %-58s | %-32s |\n", "figure", "measured"
    printf "| %-58s | %-32s |\n", "---", "---"
    printf "| %-58s | %-32s |\n", "BM_TickPost / BM_RawPost (use_awaitable's frame)",
           sprintf("%.2f (%.0f / %.0f ns)", micro["BM_TickPost"] / micro["BM_RawPost"], micro["BM_TickPost"], micro["BM_RawPost"])
    if ("BM_RawCoSpawnDetached" in micro)
      printf "| %-58s | %-32s |\n", "BM_ScopeSpawn / BM_RawCoSpawnDetached (no cancellation)",
             sprintf("%.2f (%.0f / %.0f ns)", micro["BM_ScopeSpawn"] / micro["BM_RawCoSpawnDetached"],
                     micro["BM_ScopeSpawn"], micro["BM_RawCoSpawnDetached"])
    printf "| %-58s | %-32s |\n", "BM_ControlRoundTrip / BM_RawCrossThreadPost (no timer)",
           sprintf("%.2f (%.0f / %.0f ns)", micro["BM_ControlRoundTrip"] / micro["BM_RawCrossThreadPost"],
                   micro["BM_ControlRoundTrip"], micro["BM_RawCrossThreadPost"])
  }

  print ""
  print "Every load figure (ms, or bytes per service, or restarts per second; CPU ms of the whole process), pm / baseline;"
  print "threads 2s: two threads, one io_context each (--sharded)"
  print ""
  printf "| %-16s | %-7s | %-7s | %-12s | %-12s | %-6s | %-10s | %-10s |\n", "scenario", "threads", "n", "pm", "baseline", "ratio",
         "pm cpu", "base cpu"
  printf "| %-16s | %-7s | %-7s | %-12s | %-12s | %-6s | %-10s | %-10s |\n", "---", "---", "---", "---", "---", "---", "---",
         "---"
  split("startup startup+prefault shutdown failure reload memory restart restart-logged churn", order, " ")
  split("1 1000 10000 100000", sizes, " ")
  for (o = 1; o <= 9; o++) {
    s = order[o]
    if (!(s in scen)) continue
    for (ti = 1; ti <= 3; ti++) {
      t = ti == 3 ? "2s" : ti
      for (z = 1; z <= 4; z++) {
        n = sizes[z]
        if (!((s, "pm", n, t) in load)) continue
        p = load[s, "pm", n, t]; b = load[s, "asio-baseline", n, t]
        pc = ((s, "pm", n, t) in cpu) ? sprintf("%.4g", cpu[s, "pm", n, t]) : "-"
        bc = ((s, "asio-baseline", n, t) in cpu) ? sprintf("%.4g", cpu[s, "asio-baseline", n, t]) : "-"
        printf "| %-16s | %-7s | %-7s | %-12.4g | %-12.4g | %-6s | %-10s | %-10s |\n", s, t, n, p, b,
               (b > 0 ? sprintf("%.2f", p / b) : "-"), pc, bc
      }
    }
  }
  print ""
  if (missed) {
    print missed " target(s) missed in this run."
  } else {
    print "Every target met in this run."
  }
  if (missed && STRICT == "1") exit 1
}
