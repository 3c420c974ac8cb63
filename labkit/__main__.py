"""`python -m labkit`: server start|stop|status, url, doctor, reset, bench, matrix, workshop."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from labkit import bench, doctor, workshop
from labkit.errors import ConfigError, LabkitError
from labkit.keys import current_learner, learner_pattern, reset, scan_unlink
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
    learner = current_learner()
    if learner:  # a workshop learner may delete their own keys only
        deleted = scan_unlink(lab.client_for(url), learner_pattern(learner))
        print(f"deleted {deleted} key(s) of learner {learner} ({learner_pattern(learner)}) on {mask(url)}; "
              f"other keys untouched.")
        return 0
    deleted = reset(lab.client_for(url))
    print(f"deleted {deleted} lab key(s) (lab:*) on {mask(url)}; other keys untouched.")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    bench.run(args.suites)
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    from labkit import matrix

    readme = Path(__file__).resolve().parents[1] / "README.md" if args.readme else None
    outcomes = matrix.run(args.engines, args.lessons, Path(args.output) if args.output else None, readme)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def instructor_client(args: argparse.Namespace):
    """The instructor's client: --server, else LABKIT_REDIS_URL, else this checkout's running lab server."""
    url = args.server or lab.configured_url()
    if not url:
        raise ConfigError("no server to hold the workshop: start the lab server (make lab, or python -m labkit "
                          "server start) or pass --server URL.")
    return lab.client_for(url, unreachable="Start that server, or pass --server with the URL of the workshop's "
                                           "server (as its administrator).")


def cmd_workshop(args: argparse.Namespace) -> int:
    r = instructor_client(args)
    if args.action == "create":
        seats = workshop.create(r, args.learners, host=args.host)
        out = Path(args.out) if args.out else lab.home() / "build" / "workshop"
        paths = workshop.write_sheet(seats, out, workshop.info(r)["id"])
        print(f"workshop open on {workshop.where(r)}: {len(seats)} learner(s), each allowed only lab:<learner>:* keys "
              f"and channels")
        for seat in seats:
            print(f"  {seat}")
        print(f"sheet (with the passwords, readable by you only): {', '.join(str(p) for p in paths)}")
    elif args.action == "progress":
        board = workshop.Progress(r).update()
        print(board.table(), flush=True)
        deadline = None if not args.watch else time.monotonic() + args.watch
        try:
            while args.watch is not None and (deadline is None or time.monotonic() < deadline):
                if board.update(block_ms=500).new:
                    print("\n" + "\n".join(str(attempt) for attempt in board.new) + "\n")
                    print(board.table(), flush=True)
        except KeyboardInterrupt:
            pass
    elif args.action == "reset":
        deleted = workshop.reset(r, args.learner)
        print(f"deleted {deleted} key(s) of {args.learner} on {workshop.where(r)}; their account and progress stay.")
    else:
        closed = workshop.close(r)
        removed = workshop.remove_sheet(Path(args.out) if args.out else lab.home() / "build" / "workshop",
                                        closed.id)
        print(f"workshop closed on {workshop.where(r)}: removed {len(closed.users)} user(s) and {closed.keys} "
              f"key(s)" + (f"; deleted the sheet ({', '.join(str(p) for p in removed)})" if removed else ""))
    return 0


def learners_arg(value: str) -> int | list[str]:
    """An argparse type: a number of learners, or their names separated by commas."""
    if value.strip().isdigit():
        return int(value)
    return [name.strip() for name in value.split(",")]


def watch_seconds(value: str) -> float:
    seconds = float(value)
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"--watch takes a number of seconds of at least 0, got {value!r}")
    return seconds


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
    ws = sub.add_parser("workshop", help="one shared server for many learners: create, progress, reset, close")
    ws_sub = ws.add_subparsers(dest="action", required=True)
    server_help = "the instructor's server URL, as its administrator (default: LABKIT_REDIS_URL, else the lab server)"
    create = ws_sub.add_parser("create", help="one ACL user per learner and a sheet of connection lines")
    create.add_argument("--learners", required=True, type=learners_arg, metavar="N|NAMES",
                        help="how many learners (learner01, learner02...), or their names: ada,grace,linus")
    create.add_argument("--host", help="the address learners reach the server by, in their URLs (default: the "
                                       "server's own, 127.0.0.1 for the lab server: learners on this machine)")
    create.add_argument("--out", help="where the sheet goes (default: build/workshop under the checkout)")
    progress = ws_sub.add_parser("progress", help="which exercise checks each learner has passed")
    progress.add_argument("--watch", type=watch_seconds, nargs="?", const=0.0, metavar="SECONDS",
                          help="keep reading and reprint the table at each new result (for SECONDS, or until Ctrl-C)")
    reset_p = ws_sub.add_parser("reset", help="delete one learner's keys (their account and progress stay)")
    reset_p.add_argument("learner")
    close_p = ws_sub.add_parser("close", help="remove every learner's user and key, and the sheet")
    close_p.add_argument("--out", help="where the sheet is (default: build/workshop under the checkout)")
    for command in (create, progress, reset_p, close_p):
        command.add_argument("--server", metavar="URL", help=server_help)
    ws.set_defaults(func=cmd_workshop)
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
