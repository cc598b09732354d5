"""One step of scripts/gpu/run.sh: runs a command with a time limit, its output going to the
terminal and to a log, and appends one JSON line to the run's steps file:

    {"name", "cmd", "rc", "timed_out", "seconds", "peak_gpu_mib", "base_gpu_mib", "peak_rss_mib", "log"}

Peak GPU memory is the device's used memory sampled with nvidia-smi every 100 ms while the
command runs (whole device, so it includes the CUDA context of each process: about 0.5 GiB),
minus nothing: `base_gpu_mib` is the reading just before the command. Peak RSS is the
command's largest resident set (its process tree's largest member, from getrusage).

    python3 step.py STEPS.jsonl LOG NAME TIMEOUT_S -- CMD ARGS...
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time


def gpu_used_mib():
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5).stdout
        return max(int(x) for x in out.split())
    except Exception:  # no driver, no GPU, unparsable: no reading
        return None


def main():
    steps, log, name, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    assert sys.argv[5] == "--", "usage: step.py STEPS LOG NAME TIMEOUT -- CMD..."
    cmd = sys.argv[6:]
    base = gpu_used_mib()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.wait(0.1):
            v = gpu_used_mib()
            if v is not None and (peak[0] is None or v > peak[0]):
                peak[0] = v

    sampler = threading.Thread(target=sample, daemon=True)
    if base is not None:
        sampler.start()
    print(f"==> {name}: {' '.join(cmd)}", flush=True)
    t = time.monotonic()
    timed_out = False
    with open(log, "ab") as f:
        f.write(f"==> {name}: {' '.join(cmd)}\n".encode())
        f.flush()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)

        def pump():
            for line in iter(p.stdout.readline, b""):
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
                f.write(line)
            f.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(p.pid, signal.SIGKILL)
            rc = p.wait()
        reader.join(timeout=5)
    seconds = time.monotonic() - t
    done.set()
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    rec = {"name": name, "cmd": " ".join(cmd), "rc": rc, "timed_out": timed_out,
           "seconds": round(seconds, 2), "peak_gpu_mib": peak[0], "base_gpu_mib": base,
           "peak_rss_mib": round(rss, 1), "log": os.path.basename(log)}
    with open(steps, "a") as f:
        f.write(json.dumps(rec) + "\n")
    status = "TIMED OUT" if timed_out else ("ok" if rc == 0 else f"FAILED (exit {rc})")
    print(f"<== {name}: {status} in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
