"""Peak memory of the dedup and shards stages at 1x and 4x corpus size (it should stay about flat).

1x is every fourth real passage, 4x all of them (see common.py). Each stage runs as its own
`electra-ds` process; its peak is the largest sum of resident memory over the process and its
children (worker processes included), sampled every 20 ms with psutil. The LAST line is the ratio of
the larger 4x/1x peak ratio of the two stages.

    python benchmarks/peak_memory.py [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import documents


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """(peak MB of the process tree, seconds) of running ``cmd``."""
    import psutil

    env = {**os.environ, "ELECTRA_DS_MLFLOW": "0"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.02)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()[-2000:]}")
    return peak / 2**20, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    exe = [sys.executable, "-m", "electra_ds"]
    docs, what = documents()
    print(f"data: {what}; 1x = every fourth passage, 4x = all")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for scale, subset in (("1x", docs[::4]), ("4x", docs)):
            with open(tmp / f"{scale}.jsonl", "w", encoding="utf-8") as f:
                for d in subset:
                    f.write(json.dumps({"id": d["id"], "text": d["text"]}, ensure_ascii=False) + "\n")
        subprocess.run(exe + ["vocab", "--input", str(tmp / "1x.jsonl"), "--output-dir", str(tmp / "vocab"),
                              "--vocab-size", "4000", "--sample-sentences", "50000", "--threads", str(args.workers)],
                       check=True, env={**os.environ, "ELECTRA_DS_MLFLOW": "0"}, stderr=subprocess.DEVNULL)
        for scale in ("1x", "4x"):
            inp = tmp / f"{scale}.jsonl"
            size = inp.stat().st_size / 1e6
            for stage, cmd in (
                    ("dedup", exe + ["dedup", "--input", str(inp), "--output", str(tmp / f"{scale}-kept.jsonl"),
                                     "--stats", str(tmp / f"{scale}-dedup.json"), "--threads", str(args.workers)]),
                    ("shards", exe + ["shards", "--input", str(inp), "--tokenizer-dir", str(tmp / "vocab"),
                                      "--output-dir", str(tmp / f"{scale}-shards"), "--threads", str(args.workers)])):
                mb, seconds = peak_rss(cmd)
                results[(stage, scale)] = mb
                print(f"{stage:6s} {scale}: input {size:6.1f} MB  peak RSS {mb:7.1f} MB  ({seconds:5.1f} s)")
    ratios = {stage: results[(stage, "4x")] / results[(stage, "1x")] for stage in ("dedup", "shards")}
    for stage, r in ratios.items():
        print(f"{stage}: peak 4x / 1x = {r:.2f}")
    print(f"ratio peak memory 4x / 1x (worst stage): {max(ratios.values()):.2f}")


if __name__ == "__main__":
    main()
