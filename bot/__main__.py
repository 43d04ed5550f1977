"""Command line: ``python -m bot <command>`` (also installed as ``vastops``).

Exit codes: 0 ok, 2 configuration or usage error, 1 runtime failure. A user mistake gets a
clear message, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from bot.settings import ConfigError, Settings, load_settings

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2


class UsageError(Exception):
    """A mistake in how the command was called (exit 2)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="vastops: rent, watch and tear down Vast.ai GPU instances running ComfyUI.",
        epilog="Settings come from the environment and .env; see .env.example.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("run", help="run the Discord bot", description="Run the Discord bot (needs DISCORD_*).")

    sub.add_parser(
        "check",
        help="check settings, the Vast key, the SSH key and the provisioning script",
        description="Validate settings and reach every dependency once; report each check as ok or a "
        "problem with a fix. Run this first after installing.",
    )

    offers = sub.add_parser(
        "offers", help="search rentable offers", description="Search offers with the bot's filters."
    )
    offers.add_argument("--gpu", metavar="NAME", help='GPU model, e.g. "RTX 4090" (default: any)')
    offers.add_argument("--num-gpus", type=_positive_int, default=1, metavar="N", help="GPUs (default 1)")
    offers.add_argument("--min-vram", type=_positive_float, metavar="GB", help="minimum VRAM per GPU")
    offers.add_argument(
        "--max-price", type=_positive_float, metavar="USD", help="maximum $/h (default MAX_PRICE_PER_HOUR)"
    )
    offers.add_argument("--limit", type=_positive_int, default=10, metavar="N", help="rows (default 10)")
    offers.add_argument("--json", action="store_true", help="print JSON instead of a table")

    status = sub.add_parser(
        "status", help="list the account's instances and the bot's rentals",
        description="List instances on the Vast account and what the database knows of them.",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    classify = sub.add_parser(
        "classify", help="classify a saved provisioning log",
        description="Run the watch engine's classifier and milestone parser over a saved log.",
        epilog="Exit status: 0 ready or in progress, 3 degraded, 4 failed, 2 unreadable input or not a "
        "text log (a binary file is refused).",
    )
    classify.add_argument("file", metavar="FILE|-", help="log file, or - for standard input")
    classify.add_argument("--json", action="store_true", help="print one JSON object")

    demo = sub.add_parser(
        "demo", help="rehearse the audit's failures against the built-in simulator (no token needed)",
        description="Run the engine, store and decisions against the simulator and print what would "
        "be posted to the channel, then a summary table per scenario.",
    )
    demo.add_argument("--scenario", default="all", metavar="NAME|all", help="scenario to play (default all)")
    demo.add_argument(
        "--speed", type=_positive_float, default=None, metavar="X",
        help="simulated seconds per real second (default: fast enough for all to finish in ~30 s)",
    )
    demo.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser


def _settings() -> Settings:
    return load_settings()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at exit
        return code
    except ConfigError as exc:
        print("Configuration problem:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        print("Fix the values in the environment or .env (see .env.example).", file=sys.stderr)
        return EXIT_CONFIG
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_RUNTIME
    except BrokenPipeError:
        # The reader went away (`... | head`): not an error worth a message.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # a runtime failure: one readable line, the traceback only with -v
        logging.getLogger("bot").debug("command failed", exc_info=True)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if not args.verbose:
            print("(run with -v for details)", file=sys.stderr)
        return EXIT_RUNTIME


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "classify":
        from bot.watch.classify_cli import run_classify

        secrets: dict[str, str] = {}
        try:
            secrets = load_settings().secret_values()
        except ConfigError:
            pass  # classify works on a file alone; a broken .env must not stop it
        return run_classify(args.file, as_json=args.json, secrets=secrets)

    from bot import cli

    if args.command == "demo":
        return asyncio.run(cli.demo(args))
    settings = _settings()
    if args.command == "check":
        return asyncio.run(cli.check(settings))
    if args.command == "offers":
        return asyncio.run(cli.offers(settings, args))
    if args.command == "status":
        return asyncio.run(cli.status(settings, args))
    if args.command == "run":
        missing = settings.missing_for("run")
        if missing:
            raise ConfigError([f"{name} is not set: {why}" for name, why in missing])
        return cli.run_bot(settings)
    raise UsageError(f"unknown command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
