"""`python -m labkit`: server start|stop|status, doctor, reset, bench, matrix."""

from __future__ import annotations

import argparse
import os
import sys

from labkit import bench, doctor
from labkit.errors import LabkitError
from labkit.keys import reset
from labkit.server import binaries, lab
from labkit.server.process import mask


def cmd_server(args: argparse.Namespace) -> int:
    if args.action == "start":
        state = lab.start(args.engine)
        mods = ", ".join(state["modules"]) or "none"
        where = f"{mask(state['url'])} (pid {state['pid']}, modules: {mods})"
        print(f"lab server: {state['engine']} {state['version']} at {where}")
        if state.get("module_error"):
            print(f"  modules did not load: {state['module_error']}")
        wanted = args.engine or os.environ.get("LABKIT_ENGINE")
        if wanted and wanted != state["engine"]:
            print(f"  note: {wanted} was asked for, but this checkout's lab server was already running on "
                  f"{state['engine']}; `make stop` (or python -m labkit server stop) first to switch")
        print(f"  data in {state['dir']}; full URL (with password) in {lab.state_dir() / 'server.json'}")
    elif args.action == "stop":
        print("lab server stopped." if lab.stop() else "no lab server was running.")
    else:
        state = lab.status()
        print("\n".join(f"{k}: {v}" for k, v in state.items()))
        return 0 if state["running"] else 3
    return 0


def cmd_url(_: argparse.Namespace) -> int:
    state = lab.status()
    if not state["running"]:
        print("no lab server is running: python -m labkit server start", file=sys.stderr)
        return 3
    print(lab.read_state()["url"])
    return 0


def cmd_doctor(_: argparse.Namespace) -> int:
    checks = doctor.report()
    return 1 if any(c.required and not c.ok for c in checks) else 0


def cmd_reset(_: argparse.Namespace) -> int:
    url = os.environ.get(lab.URL_ENV) or (lab.read_state() or {}).get("url")
    if not url or not (os.environ.get(lab.URL_ENV) or lab.status()["running"]):
        print("no lab server is running: nothing to reset.")
        return 0
    deleted = reset(lab.client_for(url))
    print(f"deleted {deleted} lab key(s) (lab:*) on {mask(url)}; other keys untouched.")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    bench.run(args.suites)
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    from pathlib import Path

    from labkit import matrix

    readme = Path(__file__).resolve().parents[1] / "README.md" if args.readme else None
    outcomes = matrix.run(args.engines, args.lessons, Path(args.output) if args.output else None, readme)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def suite_name(name: str) -> str:
    """An argparse type: `name` if it is a benchmark suite, else an error listing the suites."""
    if name not in bench.SUITES:
        raise argparse.ArgumentTypeError(f"unknown suite {name!r}: choose from {', '.join(bench.SUITES)}")
    return name


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m labkit", description="The lab's helper commands.")
    sub = p.add_subparsers(dest="command", required=True)
    server = sub.add_parser("server", help="start, stop or inspect this checkout's lab server")
    server.add_argument("action", choices=["start", "stop", "status"])
    server.add_argument("--engine", choices=binaries.ENGINES,
                        help=f"default: LABKIT_ENGINE if set, else {binaries.DEFAULT_ENGINE}")
    server.set_defaults(func=cmd_server)
    sub.add_parser("url", help="print the lab server's URL (with password)").set_defaults(func=cmd_url)
    sub.add_parser("doctor", help="check the environment").set_defaults(func=cmd_doctor)
    sub.add_parser("reset", help="delete the lab's keys (lab:*) on the lab server").set_defaults(func=cmd_reset)
    b = sub.add_parser("bench", help="run benchmark suites and write build/bench/results.json")
    b.add_argument("suites", nargs="*", type=suite_name, metavar="SUITE",
                   help=f"one or more of: {', '.join(bench.SUITES)} (default: all of them, in that order)")
    b.set_defaults(func=cmd_bench)
    m = sub.add_parser("matrix", help="run every lesson on every installed engine; write build/matrix.md")
    m.add_argument("--engines", nargs="+", choices=binaries.ENGINES, metavar="ENGINE",
                   help=f"some of: {', '.join(binaries.ENGINES)} (default: every one installed here)")
    m.add_argument("--lessons", nargs="+", metavar="NN", help="lesson numbers, like 05 06 (default: every lesson)")
    m.add_argument("--output", help="where to write the table (default: build/matrix.md)")
    m.add_argument("--readme", action="store_true", help="also put the table into README.md, between its markers")
    m.set_defaults(func=cmd_matrix)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except LabkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
