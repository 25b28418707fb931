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
    printf "| %-58s | %-32s | %-7s | %-4s |\n", figure, "not measured", sprintf("<= %.1f", target), "-"
    return
  }
  p = load[s, "pm", n, 1]
  # pm_load's baseline rows for failure and reload are the baseline
  # shutdown work, measured beside them, as the targets ask.
  b = load[s, "asio-baseline", n, 1]
  if (b <= 0) b = 1e-9
  r = p / b
  row(figure, sprintf("%.2fx (%.4g vs %.4g)", r, p, b), sprintf("<= %.1f", target), r <= target)
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
  v = field($0, "ms")
  if (v == "") v = field($0, "bytes_per_service")
  if (v == "") v = field($0, "per_s")
  load[s, i, n, t] = v + 0
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
  if (("BM_RawPost" in micro) && ("BM_TickPost" in micro)) {
    r = micro["BM_TickPost"] / micro["BM_RawPost"]
    row("BM_TickPost / BM_RawPost", sprintf("%.2f (%.0f / %.0f ns)", r, micro["BM_TickPost"], micro["BM_RawPost"]), "<= 1.4",
        r <= 1.4)
    r = (micro["BM_TickAwaitable"] - micro["BM_RawAwaitable"]) / micro["BM_RawPost"]
    row("(BM_TickAwaitable - BM_RawAwaitable) / BM_RawPost",
        sprintf("%.2f ((%.1f - %.1f) / %.0f ns)", r, micro["BM_TickAwaitable"], micro["BM_RawAwaitable"],
                micro["BM_RawPost"]), "<= 1.0", r <= 1.0)
    r = micro["BM_ControlRoundTrip"] / micro["BM_RawCrossThreadPost"]
    row("BM_ControlRoundTrip / BM_RawCrossThreadPost",
        sprintf("%.2f (%.0f / %.0f ns)", r, micro["BM_ControlRoundTrip"], micro["BM_RawCrossThreadPost"]), "<= 1.5",
        r <= 1.5)
  }
  ratio_row("startup, N = 100000", "startup", 100000, 2.0)
  ratio_row("shutdown, N = 100000", "shutdown", 100000, 2.0)
  ratio_row("failure, N = 10000 (vs baseline shutdown)", "failure", 10000, 2.0)
  ratio_row("reload, N = 100000 (vs baseline shutdown)", "reload", 100000, 2.0)
  ratio_row("memory per idle service, N = 100000 (bytes)", "memory", 100000, 2.0)
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

  print ""
  print "Every load figure (ms, or bytes per service, or restarts per second), pm / baseline"
  print ""
  printf "| %-9s | %-7s | %-7s | %-12s | %-12s | %-6s |\n", "scenario", "threads", "n", "pm", "baseline", "ratio"
  printf "| %-9s | %-7s | %-7s | %-12s | %-12s | %-6s |\n", "---", "---", "---", "---", "---", "---"
  split("startup shutdown failure reload memory restart churn", order, " ")
  split("1 1000 10000 100000", sizes, " ")
  for (o = 1; o <= 7; o++) {
    s = order[o]
    if (!(s in scen)) continue
    for (t = 1; t <= 2; t++) {
      for (z = 1; z <= 4; z++) {
        n = sizes[z]
        if (!((s, "pm", n, t) in load)) continue
        p = load[s, "pm", n, t]; b = load[s, "asio-baseline", n, t]
        printf "| %-9s | %-7s | %-7s | %-12.4g | %-12.4g | %-6s |\n", s, t, n, p, b, (b > 0 ? sprintf("%.2f", p / b) : "-")
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
