"""`make test-stress`: the notebooks and the timing-sensitive unit tests, three rounds, each with two
processes burning a CPU each alongside (on a 2-core machine: every test competes for the cores).
Prints one line per round and exits non-zero if any round failed."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

ROUNDS = 3
BURNERS = 2
TIMING_SENSITIVE = ["tests/test_ratelimit.py", "tests/test_locks.py", "tests/test_streams.py",
                    "tests/test_sessions.py", "tests/test_pubsub.py", "tests/test_cache.py", "tests/test_widgets.py",
                    "tests/test_scripts.py", "tests/test_topologies.py", "tests/test_vectors.py",
                    "tests/test_hygiene.py", "tests/bench", "tests/lessons"]


def burn() -> None:
    while True:
        pass


def one_round(extra: list[str]) -> tuple[bool, float]:
    started = time.monotonic()
    tests = [t for t in TIMING_SENSITIVE if os.path.exists(t)]
    done = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile", "-q", "--nbval-lax",
                           "--nbval-cell-timeout=240", "--nbval-kernel-startup-timeout=180",
                           "-m", "not leakcheck and not browser and not embeddings "
                           "and not rerun and not book", "notebooks", *tests, *extra])
    return done.returncode == 0, time.monotonic() - started


def main() -> int:
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(BURNERS)]
    for b in burners:
        b.start()
    try:
        results = [one_round(sys.argv[1:]) for _ in range(ROUNDS)]
    finally:
        for b in burners:
            b.kill()
    for i, (ok, seconds) in enumerate(results, 1):
        print(f"stress round {i}: {'passed' if ok else 'FAILED'} in {seconds:.0f} s with {BURNERS} CPU burners")
    print(f"stress: {sum(ok for ok, _ in results)} of {ROUNDS} rounds green")
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
