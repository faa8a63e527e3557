"""The `streamd` command: start the supervisor, talk to a running one, and the one-shot tools.

Over 300 lines on purpose: the parser and one short `cmd_*` function per command read best side by
side, as one table of what the command line offers; the work itself lives in the modules they call.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from streamd import child_verbs, control, logs
from streamd import config as config_module
from streamd.config import Config, ConfigError
from streamd.group_offsets import KafkaUnreadable
from streamd.kafka import KafkaUnavailable

EXIT_USAGE = 2  # bad config or arguments: nothing was started
EXIT_NOT_RUNNING = 3  # the LSB status code for "program is not running"
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a command ended by SIGPIPE


class CommandError(Exception):
    """A user-facing failure with a one-sentence explanation; exit code 1."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"streamd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except child_verbs.UnknownChild as exc:
        print(f"streamd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Kafka going away in the middle of a command is a sentence too, not a traceback.
    except (CommandError, control.NotRunning, child_verbs.VerbFailed, KafkaUnavailable, KafkaUnreadable) as exc:
        print(f"streamd: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`streamd status | head -3`): stop quietly, as a shell tool killed by
        # SIGPIPE would, and keep Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamd", description="A supervised Kafka → MongoDB → HTTP pipeline in one command."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-c", "--config", help="config file (default: ./config.yaml, else /etc/streamd/config.yaml)")
        sub.set_defaults(handler=handler)
        return sub

    start = command("start", cmd_start, "Run the supervisor in the foreground; with CHILD, start that child again.")
    start.add_argument("child", nargs="?", metavar="CHILD", help="a child stopped with `streamd stop CHILD`")
    stop = command("stop", cmd_stop, "Stop the running supervisor gracefully and wait; with CHILD, only that child.")
    stop.add_argument("child", nargs="?", metavar="CHILD", help="e.g. consumer-2, api, producer, analyzer")
    stop.add_argument("--timeout", type=float, help="seconds to wait (default: graceful_timeout + 15)")
    restart = command("restart", cmd_restart, "Restart every child gracefully, or only CHILD; the supervisor stays.")
    restart.add_argument("child", nargs="?", metavar="CHILD", help="e.g. consumer-2, api, producer, analyzer")
    logs_command = command("logs", cmd_logs, "Print the last lines of every child's log file, or of CHILD's.")
    logs_command.add_argument("child", nargs="?", metavar="CHILD", help="e.g. consumer-2, api, supervisor")
    logs_command.add_argument("-n", "--lines", type=positive_int, default=50, help="how many lines (default 50)")
    logs_command.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    status = command(
        "status", cmd_status, "List every child with its state; exit 3 unless every child runs (LSB, supervisorctl)."
    )
    status.add_argument("--json", action="store_true", help="print the supervisor's answer as JSON")
    command("reload", cmd_reload, "Re-read config.yaml and apply only what changed (same as SIGHUP).")

    produce = command("produce", cmd_produce, "Send messages once and report sent / acked / failed.")
    what = produce.add_mutually_exclusive_group(required=True)
    what.add_argument("--count", type=positive_int, help="generated messages to send")
    what.add_argument(
        "--file",
        metavar="F",
        help="send the messages of F as they are: one JSON object per line, or a JSON array; - reads stdin",
    )
    produce.add_argument("--rate", type=float, help="messages per second (default: as fast as possible)")
    produce.add_argument("--source", help="the generated messages' source field (default: producer.source)")

    verify = command(
        "verify", cmd_verify, "Check that every message of the topic is stored once or dead-lettered; exit 1 if not."
    )
    verify.add_argument("--since", type=iso_time, help="only messages with a Kafka timestamp at or after (ISO 8601)")
    verify.add_argument("--until", type=iso_time, help="only messages with a Kafka timestamp at or before (ISO 8601)")
    verify.add_argument("--json", action="store_true", help="print the counts and problems as JSON")

    redrive = command(
        "redrive", cmd_redrive, "Send dead letters back to the topic once their cause is fixed; each at most once."
    )
    redrive.add_argument("--reason", help="only dead letters of this reason (e.g. schema, stage, not_json)")
    redrive.add_argument("--since", type=iso_time, help="only dead letters written at or after (ISO 8601)")
    redrive.add_argument("--until", type=iso_time, help="only dead letters written at or before (ISO 8601)")
    redrive.add_argument("--dry-run", action="store_true", help="count what would be sent; send nothing")
    redrive.add_argument("--json", action="store_true", help="print the counts as JSON")

    bench = command(
        "bench", cmd_bench, "Measure throughput, latency and API speed against the store's and Kafka's own limits."
    )
    bench.add_argument("--quick", action="store_true", help="fewer messages, points and rounds: about a minute")
    bench.add_argument("--json", metavar="PATH", help="also write every figure to PATH as JSON")
    bench.add_argument("--messages", type=positive_int, help="backlog size for the throughput figures")
    bench.add_argument("--processes", type=int_list, help="consumer process counts to drain with, e.g. 1,2,4")
    bench.add_argument("--loads", type=int_list, help="offered loads in messages/s for latency, e.g. 100,1000")
    bench.add_argument(
        "--rounds", type=positive_int, help="rounds of streamd next to Kafka Connect (default 3, 1 with --quick)"
    )

    stack = command("stack", cmd_stack, "Run the local Kafka and MongoDB-wire store for development.")
    stack.add_argument("action", choices=["up", "down", "status"])

    stages = command("stages", cmd_stages, "Run the configured stages on sample messages and explain each step.")
    stages.add_argument("action", choices=["try"])
    samples = stages.add_mutually_exclusive_group()
    samples.add_argument("--file", metavar="F", help="messages to try: one JSON object per line, or a JSON array")
    samples.add_argument("--from-topic", metavar="N", type=positive_int, help="try the last N messages of kafka.topic")
    stages.add_argument("--json", action="store_true", help="print the explanation as JSON")

    keys = command("keys", cmd_keys, "Issue, list and revoke the API's keys (see docs/security.md).")
    keys_actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = keys_actions.add_parser("add", help="issue a key; it is printed once, on stdout, and stored hashed")
    add.add_argument("name", metavar="NAME", help="who or what holds the key, e.g. grafana or ci-ingest")
    add.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=config_module.SCOPES,
        help="a scope of the key; repeat for several (admin holds them all)",
    )
    keys_list = keys_actions.add_parser("list", help="every key: name, id, scopes, created; never the key itself")
    keys_list.add_argument("--json", action="store_true", help="print the entries as JSON")
    revoke = keys_actions.add_parser("revoke", help="remove a key; running API workers refuse it within a second")
    revoke.add_argument("key", metavar="NAME_OR_ID", help="the key's name or id, as `streamd keys list` shows")
    for action in (add, keys_list, revoke):
        # After the action too (`streamd keys add ci -c FILE`); SUPPRESS keeps a -c given before it.
        action.add_argument("-c", "--config", default=argparse.SUPPRESS, help="config file, as for every command")

    show = command("config", cmd_config, "Print the effective config (file, defaults and environment).")
    show.add_argument("--keys", action="store_true", help="print every key with its default and meaning")
    return parser


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers like 1,2,4") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("every value must be at least 1")
    return values


def iso_time(text: str) -> datetime:
    from streamd.message_schema import parse_timestamp

    try:
        return parse_timestamp(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date and time like 2024-06-01T12:00Z") from None


def load(args: argparse.Namespace) -> Config:
    return config_module.load(args.config)


def load_to_reach_supervisor(args: argparse.Namespace) -> Config:
    """`status` and `stop` must reach a running pipeline even while its config file is being edited badly."""
    try:
        return load(args)
    except ConfigError as exc:
        config = config_module.locate_only(args.config)
        print(
            f"streamd: warning: the config file is invalid: {exc} "
            f"Looking for the supervisor in state directory {config.state_path} anyway.",
            file=sys.stderr,
        )
        return config


# --- supervisor commands ----------------------------------------------------------------------------


def cmd_start(args: argparse.Namespace) -> int:
    from streamd import stack
    from streamd.plan import service_children
    from streamd.supervisor import Supervisor

    if args.child is not None:
        return child_verb(args, "start")
    config = load(args)
    logs.configure(config.logging, "supervisor")
    pid = control.running_pid(config)
    if pid is not None:
        raise CommandError(
            f"a supervisor already runs for state directory {config.state_path} (pid {pid}); "
            "use `streamd status` to see it or `streamd stop` to stop it."
        )
    # Only now: a second `streamd start` must not write (and rotate) the running supervisor's file.
    logs.configure(config.logging, "supervisor", logs.log_dir(config))
    services = []
    if config.stack.local is not False:
        try:
            stack.provision(config)
            services = stack.services_to_run(config)
        except stack.StackError as exc:
            raise CommandError(str(exc)) from None
    return Supervisor(config, service_children(services)).run()


def cmd_stop(args: argparse.Namespace) -> int:
    if args.child is not None:
        return child_verb(args, "stop")
    config = load_to_reach_supervisor(args)
    pid = control.running_pid(config)
    if pid is None:
        # LSB and systemctl: stopping what is already stopped succeeds.
        print(f"streamd is not running (state directory {config.state_path}); nothing to stop")
        return 0
    os.kill(pid, signal.SIGTERM)
    timeout = args.timeout if args.timeout is not None else config.supervisor.graceful_timeout + 15
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not control.process_alive(pid):
            print(f"streamd stopped (pid {pid})")
            return 0
        time.sleep(0.2)
    raise CommandError(f"the supervisor (pid {pid}) is still stopping after {timeout:.0f} s; see its log.")


def cmd_reload(args: argparse.Namespace) -> int:
    try:
        config = load(args)
    except ConfigError as exc:
        # The supervisor would refuse this file too; say so here instead of sending SIGHUP for nothing.
        pid = control.running_pid(config_module.locate_only(args.config))
        keeps = f"the running supervisor (pid {pid}) keeps its current config" if pid else "no reload was sent"
        raise ConfigError(f"{exc} Not reloading: {keeps}; fix the file and run `streamd reload` again.") from None
    pid = require_supervisor(config)
    os.kill(pid, signal.SIGHUP)
    print(f"reload requested (pid {pid}); the supervisor logs what changed, or why it kept the old config")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import orjson

    config = load_to_reach_supervisor(args)
    try:
        answer = control.request_status(config)
    except control.NotRunning as exc:
        if args.json:
            print(orjson.dumps({"running": False, "reason": str(exc)}, option=orjson.OPT_INDENT_2).decode())
        else:
            print(f"streamd: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    # As supervisorctl: a health check built on the exit code must see a child in BACKOFF or FATAL.
    code = 0 if all(child["state"] == "RUNNING" for child in answer["children"]) else EXIT_NOT_RUNNING
    if answer.get("waiting_for"):
        code = EXIT_NOT_RUNNING  # the children run, but the pipeline cannot work yet
    if answer.get("reload_refused"):
        print(
            f"streamd: warning: the last reload was refused; the supervisor runs its previous config: "
            f"{answer['reload_refused']}",
            file=sys.stderr,
        )
    if answer.get("waiting_for"):
        print(f"streamd: not ready yet: waiting for {answer['waiting_for']}", file=sys.stderr)
    if args.json:
        print(orjson.dumps({"running": True, **answer}, option=orjson.OPT_INDENT_2).decode())
        return code
    print(f"supervisor pid {answer['pid']}, up {format_duration(answer['uptime'])}, config {answer['config']}")
    print(f"{'CHILD':<14}{'STATE':<10}{'PID':>8}  {'UPTIME':>9}  {'RESTARTS':>8}  LAST EXIT")
    for child in answer["children"]:
        uptime = format_duration(child["uptime"]) if child["uptime"] is not None else "-"
        # .get: a supervisor started before this version does not say who stopped a child.
        by = f" (stopped by {child['stopped_by']})" if child.get("stopped_by") else ""
        print(
            f"{child['name']:<14}{child['state']:<10}{child['pid'] or '-':>8}  {uptime:>9}  "
            f"{child['restarts']:>8}  {child['last_exit'] or '-'}{by}"
        )
    return code


def cmd_restart(args: argparse.Namespace) -> int:
    return child_verb(args, "restart")


def child_verb(args: argparse.Namespace, verb: str) -> int:
    config = load_to_reach_supervisor(args)
    require_supervisor(config)
    child_verbs.run(config, verb, [args.child] if args.child else [], sys.stdout)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from streamd import log_files

    config = load_to_reach_supervisor(args)
    try:
        log_files.show(logs.log_dir(config), args.child, args.lines, args.follow, sys.stdout)
    except log_files.NoLogFile as exc:
        raise CommandError(str(exc)) from None
    return 0


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamd")
    except PackageNotFoundError:
        return "(not installed: running from a source tree)"


def require_supervisor(config: Config) -> int:
    pid = control.running_pid(config)
    if pid is None:
        raise CommandError(f"no streamd supervisor is running for state directory {config.state_path}.")
    return pid


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# --- one-shot tools ---------------------------------------------------------------------------------


def cmd_produce(args: argparse.Namespace) -> int:
    from streamd import producer

    config = load(args)
    logs.configure(config.logging, "produce")
    if args.file is None:
        report = producer.produce_once(config, count=args.count, rate=args.rate, source=args.source)
        expected = args.count
    else:
        from streamd.message_file import MessageFileError, read_messages

        if args.source is not None:
            print("streamd: --source names generated messages; a file's messages are sent as written.", file=sys.stderr)
            return EXIT_USAGE
        try:
            messages = read_messages(args.file)  # all of it first: a bad line must not leave half the file sent
        except MessageFileError as exc:
            print(f"streamd: {exc} Nothing was sent.", file=sys.stderr)
            return EXIT_USAGE
        report = producer.produce_messages(config, messages, rate=args.rate)
        expected = len(messages)
    print(f"sent {report.sent}, acked {report.acked}, failed {report.failed}")
    return 0 if report.failed == 0 and report.acked == expected else 1


def cmd_verify(args: argparse.Namespace) -> int:
    from streamd import verify

    config = load(args)
    logs.configure(config.logging, "verify")
    try:
        report = verify.verify(config, since=args.since, until=args.until, progress=sys.stderr)
    except verify.VerifyError as exc:
        raise CommandError(str(exc)) from None
    verify.print_report(report, as_json=args.json)
    return 0 if report.ok else 1


def cmd_redrive(args: argparse.Namespace) -> int:
    import orjson

    from streamd import redrive
    from streamd.verify import VerifyError

    config = load(args)
    logs.configure(config.logging, "redrive")
    try:
        report = redrive.redrive(config, args.reason, args.since, args.until, args.dry_run, progress=sys.stderr)
    except VerifyError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1


def cmd_bench(args: argparse.Namespace) -> int:
    import dataclasses

    import orjson

    from streamd import bench

    config = load(args)
    logs.configure(dataclasses.replace(config.logging, level="WARNING"), "bench")
    options = bench.BenchOptions.quick_run() if args.quick else bench.BenchOptions()
    overrides = {"messages": args.messages, "processes": args.processes, "loads": args.loads, "rounds": args.rounds}
    options = dataclasses.replace(options, **{key: value for key, value in overrides.items() if value is not None})
    try:
        figures = bench.run(config, options)
    except bench.BenchError as exc:
        raise CommandError(str(exc)) from None
    print(bench.render(figures))
    if args.json:
        try:
            with open(args.json, "wb") as out:
                out.write(orjson.dumps(figures, option=orjson.OPT_INDENT_2) + b"\n")
        except OSError as exc:
            raise CommandError(f"cannot write {args.json} ({exc.strerror}); the table above has the figures.") from None
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from streamd import stack

    config = load(args)
    logs.configure(config.logging, "stack")
    try:
        if args.action == "up":
            stack.ensure_running(config)
            return stack.print_status(config)
        if args.action == "down":
            stack.down(config)
            return 0
        return stack.print_status(config)
    except stack.StackError as exc:
        raise CommandError(str(exc)) from None


def cmd_stages(args: argparse.Namespace) -> int:
    from streamd.stages import trial

    config = load(args)
    logs.configure(config.logging, "stages")
    topic = config.kafka.topic
    try:
        if args.file:
            messages = trial.from_file(args.file, topic)
        elif args.from_topic:
            messages = trial.from_topic(config, args.from_topic)
        else:
            messages = trial.generated(topic, config.producer.source)
    except trial.SamplesUnreadable as exc:
        raise CommandError(str(exc)) from None
    trial.run(config, messages, sys.stdout, as_json=args.json)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    import orjson

    from streamd import api_keys

    config = load(args)
    path = api_keys.keys_path(config)
    try:
        if args.action == "add":
            key, token = api_keys.issue(path, args.name, args.scope)
            # The key alone on stdout, so that `streamd keys add ci --scope ingest > ci.key` keeps just it.
            print(token)
            print(
                f"streamd: key {key.name!r} (id {key.id}, scope {', '.join(key.scopes)}) added to {path}; "
                "it is shown only this once.",
                file=sys.stderr,
            )
        elif args.action == "revoke":
            key = api_keys.revoke(path, args.key)
            print(f"key {key.name!r} (id {key.id}) revoked; running API workers refuse it within a second")
        elif args.json:
            keys = api_keys.read_keys(path).values()
            shown = [{name: value for name, value in key.as_dict().items() if name != "sha256"} for key in keys]
            print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
        else:
            keys = api_keys.read_keys(path).values()
            if not keys:
                print(f"no API keys in {path}; `streamd keys add NAME --scope read` issues one", file=sys.stderr)
            for key in keys:
                print(f"{key.name:<24}{key.id:<14}{','.join(key.scopes):<24}{key.created}")
    except api_keys.KeysFileError as exc:
        raise CommandError(str(exc)) from None
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from streamd.redaction import shown_config

    if args.keys:
        for key, default, meaning in config_module.documented_keys():
            shown = "" if default is None else default
            print(f"{key} = {shown!r}\n    {meaning}  (env {config_module.env_name(key)})")
        return 0
    config = load(args)
    print(f"# effective config from {config.source or 'built-in defaults'} and STREAMD_* variables")
    # Secrets are masked: this output lands in terminals and bug reports.
    print(yaml.safe_dump(shown_config(config), sort_keys=False, allow_unicode=True), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
