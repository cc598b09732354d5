"""The summary of a scripts/gpu/run.sh run, as Markdown on stdout.

    python3 summary.py RUN_DIR DEVICE COMMIT
"""

import glob
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time


def gpu_name():
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        return out or None
    except Exception:
        return None


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def train_figures(run, name):
    """Loss figures of one training run from its log.jsonl."""
    path = os.path.join(run, name, "log.jsonl")
    if not os.path.exists(path):
        return None
    steps = []
    for line in open(path):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "loss" in rec and "step" in rec:
            steps.append(rec)
    if not steps:
        return None
    losses = [r["loss"] for r in steps]
    finite = [x for x in losses if isinstance(x, (int, float)) and math.isfinite(x)]
    k = max(1, min(10, len(losses) // 4))
    first = statistics.mean(finite[:k]) if finite else float("nan")
    last = statistics.mean(finite[-k:]) if finite else float("nan")
    secs = [r["seconds"] for r in steps[3:] if isinstance(r.get("seconds"), (int, float))]
    # `seconds` is the run's elapsed time at the step: the step time is its difference.
    per = [b - a for a, b in zip(secs, secs[1:])]
    return {
        "steps": len(steps),
        "first": first,
        "last": last,
        "k": k,
        "nan": len(finite) != len(losses),
        "falls": bool(finite) and last < 0.8 * first,
        "step_ms": statistics.median(per) * 1e3 if per else None,
        "curve": [round(x, 4) if isinstance(x, float) and math.isfinite(x) else str(x) for x in losses],
    }


def test_counts(log):
    passed = failed = ignored = 0
    found = False
    for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", log):
        found = True
        passed += int(m.group(1))
        failed += int(m.group(2))
        ignored += int(m.group(3))
    skipped = len(re.findall(r"SKIPPED", log))
    fails = re.findall(r"^---- (\S+) stdout ----", log, re.M)
    return (passed, failed, ignored, skipped, fails) if found else None


def main():
    run, device, commit = sys.argv[1], sys.argv[2], sys.argv[3]
    steps = [json.loads(x) for x in open(os.path.join(run, "steps.jsonl")) if x.strip()]
    logs = {}
    for s in steps:
        p = os.path.join(run, "logs", f"{s['name']}.log")
        logs[s["name"]] = open(p, errors="replace").read() if os.path.exists(p) else ""
    gpu = gpu_name()
    print(f"# detclip GPU run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(f"- device: `{device}`; GPU: {gpu or 'none'}; CPU: {cpu_name()}, {os.cpu_count()} cores")
    print(f"- commit: {commit}; command: `scripts/gpu/run.sh {' '.join(sys.argv[4:]) or '(see run.log)'}`")
    print("- peak GPU memory: the device's used memory sampled every 100 ms (nvidia-smi), less "
          "the reading before the step (each process's CUDA context included)\n")
    print("| step | result | seconds | peak GPU MiB over base | peak RSS MiB | figures |")
    print("|---|---|---:|---:|---:|---|")
    bad = 0
    for s in steps:
        if s.get("skipped"):
            print(f"| {s['name']} | skipped (budget) | | | | |")
            bad += 1
            continue
        res = "TIMED OUT" if s["timed_out"] else ("ok" if s["rc"] == 0 else f"FAILED ({s['rc']})")
        bad += res != "ok"
        gpu_mib = "" if s["peak_gpu_mib"] is None else str(s["peak_gpu_mib"] - (s["base_gpu_mib"] or 0))
        fig = ""
        log = logs.get(s["name"], "")
        if s["name"].startswith("train-"):
            t = train_figures(run, s["name"])
            if t:
                fig = (f"{t['steps']} steps; loss {t['first']:.3f} (first {t['k']}) → {t['last']:.3f} "
                       f"(last {t['k']}); {'falls' if t['falls'] else 'DOES NOT FALL'}"
                       f"{'; NaN/inf' if t['nan'] else ''}"
                       + (f"; {t['step_ms']:.0f} ms/step" if t['step_ms'] else ""))
        elif s["name"].startswith("test-"):
            c = test_counts(log)
            if c:
                fig = f"{c[0]} passed, {c[1]} failed, {c[2]} ignored, {c[3]} said SKIPPED"
                if c[4]:
                    fig += "; failed: " + ", ".join(c[4][:8])
        elif s["name"] == "check":
            ok = len(re.findall(r"\s ok$", log, re.M))
            failed = [x.split("  ")[0] for x in log.splitlines() if re.search(r"\sFAIL", x)]
            fig = f"{ok} ops ok, {len(failed)} failed" + (": " + ", ".join(failed[:6]) if failed else "")
        print(f"| {s['name']} | {res} | {s['seconds']:.1f} | {gpu_mib} | {s['peak_rss_mib']:.0f} | {fig} |")
    print(f"\n{len(steps) - bad} of {len(steps)} steps ok.\n")

    curves = {}
    for d in sorted(glob.glob(os.path.join(run, "train-*"))):
        t = train_figures(run, os.path.basename(d))
        if t:
            curves[os.path.basename(d)] = t["curve"]
    if curves:
        print("## Loss curves (total loss per step)\n")
        for name, c in curves.items():
            print(f"- {name}: {', '.join(str(x) for x in c)}")
        print()
    for md in sorted(glob.glob(os.path.join(run, "results", "*.md"))):
        print(f"## results/{os.path.basename(md)}\n")
        # the file's headings one level down, under this section's
        print(re.sub(r"^(#+) ", lambda m: "##" + m.group(1) + " ", open(md).read().strip(), flags=re.M))
        print()


if __name__ == "__main__":
    main()
