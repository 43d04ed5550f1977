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

from bot.db.store import DatabasePathError
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


TEARDOWN_HELP = (
    "TEARDOWN_POLICY=destroy (default): a conclusive failure (a fatal log line, a missed deadline, a dead "
    "container) is destroyed at once; an ambiguous case (a rental whose ComfyUI is ready but that reached the "
    "dollar cap) gets a teardown proposal whose default action on expiry is destroy. TEARDOWN_POLICY=propose: "
    "every teardown is proposed first, with destroy as the default action when nobody answers within "
    "PROPOSAL_TIMEOUT."
)
MAX_OFFER_ROWS = 1000  # what one Vast search returns at most


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vastops")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _offer_limit(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_OFFER_ROWS:
        raise argparse.ArgumentTypeError(f"at most {MAX_OFFER_ROWS} (what one Vast search returns)")
    return value


def _common_options(*, top: bool) -> argparse.ArgumentParser:
    """Options accepted before or after the command (``vastops -v status`` = ``vastops status -v``).

    Below a command the defaults are SUPPRESS so an option given before it is not reset.
    """
    common = argparse.ArgumentParser(add_help=False)
    default: object = argparse.SUPPRESS if not top else None
    common.add_argument("-v", "--verbose", action="store_true", default=default if not top else False,
                        help="log debug output to stderr")
    common.add_argument("--api-key", metavar="KEY", default=default,
                        help="Vast.ai API key (default: VAST_API_KEY, else ~/.config/vastai/vast_api_key)")
    common.add_argument("--url", metavar="URL", default=default, help="Vast.ai API base URL (default: VAST_API_URL)")
    return common


def _json_flag(parser: argparse.ArgumentParser, what: str = "print JSON instead of a table") -> None:
    parser.add_argument("--json", "--raw", dest="json", action="store_true", help=f"{what} (--raw: the same)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vastops",
        description="vastops: rent, watch and tear down Vast.ai GPU instances running ComfyUI. "
        "Also runs as `python -m bot`.",
        epilog="Settings come from the environment and .env; see .env.example. Exit codes: 0 ok, 2 configuration "
        "or usage error, 1 runtime failure. " + TEARDOWN_HELP,
        parents=[_common_options(top=True)],
    )
    parser.add_argument("--version", action="version", version=f"vastops {_version()}")
    common = [_common_options(top=False)]
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("run", help="run the Discord bot", parents=common,
                   description="Run the Discord bot (needs DISCORD_*). The watcher starts first and keeps "
                   "running while Discord is unreachable; the login is retried forever with backoff (a refused "
                   "token exits 2). A heartbeat file is rewritten after every watch poll. " + TEARDOWN_HELP)

    check = sub.add_parser(
        "check", parents=common,
        help="check settings, the Vast key, the SSH key, the database and the provisioning script",
        description="Validate settings and reach every dependency once; report each check as ok or a "
        "problem with a fix, and show the settings that decide what money is spent. Run this first after "
        "installing. With --running: only say whether a running bot is watching (its heartbeat is fresh).",
    )
    check.add_argument("--running", action="store_true",
                       help="exit 0 if a running bot's heartbeat is fresh, 1 if it is stale or missing")
    check.add_argument("--max-age", type=_positive_float, metavar="SECONDS",
                       help="with --running: the heartbeat age that counts as stale "
                       "(default 3 poll intervals, at least 120 s)")

    offers = sub.add_parser(
        "offers", parents=common, help="search rentable offers",
        description="Search offers with the bot's filters (excluded countries, reliability, max price). "
        "GPU names are case-insensitive, with spaces or underscores (rtx_4090 = RTX 4090); `vastops gpus` "
        "lists the names on offer.",
    )
    offers.add_argument("--gpu", metavar="NAME", help='GPU model, e.g. "RTX 4090" or rtx_4090 (default: any)')
    offers.add_argument("--num-gpus", type=_positive_int, default=1, metavar="N", help="GPUs (default 1)")
    offers.add_argument("--min-vram", type=_positive_float, metavar="GB", help="minimum VRAM per GPU")
    offers.add_argument(
        "--max-price", type=_positive_float, metavar="USD", help="maximum $/h (default MAX_PRICE_PER_HOUR)"
    )
    offers.add_argument("--limit", type=_offer_limit, default=10, metavar="N",
                        help=f"rows (default 10, at most {MAX_OFFER_ROWS})")
    offers.add_argument("--order", metavar="COL[-]", default="price",
                        help="sort by a column, a trailing - for descending: price, vram, dlperf, reliability, "
                        "down, disk, cuda (default price)")
    offers.add_argument("--cols", metavar="LIST",
                        help="extra columns, comma-separated: disk, cuda, dlperf, reliability, down, verified, "
                        "machine, all")
    _json_flag(offers)

    gpus = sub.add_parser("gpus", parents=common, help="list the GPU names on offer (for offers --gpu)",
                          description="List the GPU models with at least one offer passing the bot's filters, "
                          "with the number of offers and the cheapest $/h.")
    gpus.add_argument("--max-price", type=_positive_float, metavar="USD",
                      help="maximum $/h (default MAX_PRICE_PER_HOUR)")
    _json_flag(gpus)

    status = sub.add_parser(
        "status", parents=common, help="list the account's instances and the bot's rentals",
        description="List instances on the Vast account and what the database knows of them, and the bot's "
        "rentals that have no instance yet. With --json, rental_state is the rental's state, or \"untracked\" "
        "for an instance the bot does not know (it bills all the same).",
    )
    _json_flag(status)

    show = sub.add_parser("show", parents=common, help="one rental's status card, as text",
                          description="The status card of a rental (as /status rental shows it in Discord).")
    show.add_argument("rental", metavar="RENTAL", help="rental id (#12 or 12) or label")
    _json_flag(show, "print JSON")

    logs = sub.add_parser("logs", parents=common, help="a rental's redacted log tail",
                          description="The redacted tail of a rental's provisioning log as the bot last read it "
                          "(container log via Vast, else the bot's recorded events), as /logs shows it.")
    logs.add_argument("rental", metavar="RENTAL", help="rental id (#12 or 12) or label")
    logs.add_argument("--tail", type=_positive_int, default=50, metavar="N", help="lines (default 50)")
    logs.add_argument("--errors", action="store_true", help="only lines the classifier flags as warnings or worse")

    destroy = sub.add_parser("destroy", parents=common, help="destroy a rental or an instance (asks first)",
                             description="Destroy a rental (by rental id or label) or an instance (by instance "
                             "id, also one the bot does not know), verify with Vast, print the receipt.")
    destroy.add_argument("target", metavar="RENTAL|INSTANCE", help="rental id or label, or instance id")
    destroy.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    destroy.add_argument("--reason", metavar="TEXT", help="recorded with the teardown")

    classify = sub.add_parser(
        "classify", parents=common, help="classify a saved provisioning log",
        description="Run the watch engine's classifier and milestone parser over a saved log.",
        epilog="Exit status: 0 ready or in progress, 3 degraded, 4 failed, 2 unreadable input or not a "
        "text log (a binary file is refused).",
    )
    classify.add_argument("file", metavar="FILE|-", help="log file, or - for standard input")
    _json_flag(classify, "print one JSON object")

    demo = sub.add_parser(
        "demo", parents=common,
        help="rehearse the audit's failures against the built-in simulator (no token needed)",
        description="Run the engine, store and decisions against the simulator and print what would "
        "be posted to the channel, then a summary table per scenario.",
    )
    demo.add_argument("--scenario", default="all", metavar="NAME|all", help="scenario to play (default all)")
    demo.add_argument(
        "--speed", type=_positive_float, default=None, metavar="X",
        help="simulated seconds per real second (default: fast enough for all to finish in ~30 s)",
    )
    demo.add_argument("--list", action="store_true", help="list the scenarios and exit")
    from bot.audit_cli import add_parser as add_audit_parser

    add_audit_parser(sub)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """Settings with the command line's --api-key/--url on top, and vastai's own key file as a fallback."""
    overrides: dict[str, object] = {}
    if getattr(args, "api_key", None):
        overrides["vast_api_key"] = args.api_key
    if getattr(args, "url", None):
        overrides["vast_api_url"] = args.url
    settings = load_settings(**overrides)
    if settings.vast_api_key is None and not settings.is_sim:
        from bot.settings import vastai_key_from_file

        key = vastai_key_from_file()
        if key is not None:
            settings = load_settings(**overrides, vast_api_key=key)
            settings._key_source = "~/.config/vastai/vast_api_key"
    return settings


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
    except DatabasePathError as exc:
        print("Configuration problem:", file=sys.stderr)
        print(f"  - {exc.operator_message()}", file=sys.stderr)
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
            secrets = _settings(args).secret_values()
        except ConfigError:
            pass  # classify works on a file alone; a broken .env must not stop it
        return run_classify(args.file, as_json=args.json, secrets=secrets)

    from bot import cli

    if args.command == "demo":
        return asyncio.run(cli.demo(args))
    settings = _settings(args)
    if args.command == "check" and args.running:
        return cli.check_running(settings, max_age=args.max_age)
    if args.command == "check":
        return asyncio.run(cli.check(settings))
    if args.command == "offers":
        return asyncio.run(cli.offers(settings, args))
    if args.command == "gpus":
        return asyncio.run(cli.gpus(settings, args))
    if args.command == "status":
        return asyncio.run(cli.status(settings, args))
    if args.command == "show":
        return asyncio.run(cli.show(settings, args))
    if args.command == "logs":
        return asyncio.run(cli.logs(settings, args))
    if args.command == "destroy":
        return asyncio.run(cli.destroy(settings, args))
    if args.command == "audit":
        from bot.audit_cli import run_audit

        return asyncio.run(run_audit(settings, args))
    if args.command == "run":
        missing = settings.missing_for("run")
        if missing:
            raise ConfigError([f"{name} is not set: {why}" for name, why in missing])
        return cli.run_bot(settings)
    raise UsageError(f"unknown command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
