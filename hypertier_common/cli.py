"""The command-line skeleton of both agents: one convention, two programs.

An agent describes itself in an :class:`Agent` (name, version, config loader,
its own subcommands); :func:`main` builds the argparse tree, adds the commands
every agent has (``status``, ``reload``, ``stop``, ``config check``, ``config
show``), sets up logging, installs the signal handlers of the daemon command
and maps errors to exit codes:

====  =========================================================================
0     ok
1     runtime failure (an AgentError other than the two below, or a bug)
2     usage or configuration error (argparse, ConfigError)
3     ``status``: no daemon is running (LSB), with a hint to ``systemctl status``
====  =========================================================================

``-v``/``-q``/``--log-format`` are accepted before and after the subcommand.
Errors print as ``PROG: error: MESSAGE`` on stderr; the daemon command (``run``)
logs them instead, since its stderr is its log (journald).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from hypertier_common.control import ControlClient
from hypertier_common.errors import AgentError, ConfigError, NotRunning
from hypertier_common.logsetup import LOG_FORMATS, setup_logging
from hypertier_common.signals import Signals

__all__ = [
    "EXIT_FAILURE",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "EXIT_USAGE",
    "Agent",
    "Command",
    "add_config_flag",
    "add_run_flags",
    "add_socket_flags",
    "build_parser",
    "check_standalone",
    "client",
    "config_path",
    "load_config",
    "main",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


class Command(Protocol):
    """One subcommand: a module (or object) with these four names.

    ``DAEMON = True`` marks the long-running command: :func:`main` installs the
    signal handlers for it (``args.signals``) and logs its errors.
    """

    @property
    def HELP(self) -> str: ...

    @property
    def EPILOG(self) -> str: ...

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def main(self, args: argparse.Namespace) -> int: ...


class ConfigModule(Protocol):
    """An agent's ``config`` module, as the skeleton uses it."""

    @property
    def DEFAULT_CONFIG(self) -> Path: ...

    @property
    def Config(self) -> Callable[[], Any]: ...

    @property
    def load(self) -> Callable[[Path], Any]: ...

    @property
    def dumps(self) -> Callable[[Any], str]: ...


@dataclass(frozen=True)
class Agent:
    """What the skeleton needs to know of one agent's command line.

    ``config.Config`` instances have a ``control_socket`` (the path);
    ``format_status`` renders the ``status`` result for people; ``commands``
    are the agent's own, ``("run",)`` first.
    """

    prog: str
    version: str
    config: ConfigModule
    error_kinds: Mapping[str, type[AgentError]]
    format_status: Callable[[Any], str]
    commands: Mapping[tuple[str, ...], Command]
    description: str
    examples: str
    groups: Mapping[str, str] = field(default_factory=dict)

    @property
    def default_config(self) -> Path:
        return self.config.DEFAULT_CONFIG


# -- the commands every agent has ---------------------------------------------


def add_config_flag(parser: argparse.ArgumentParser, default: Path) -> None:
    """``-c/--config FILE``; see :func:`config_path` for the default."""
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"TOML configuration (default {default} if it exists)",
    )


def add_run_flags(
    parser: argparse.ArgumentParser, default_config: Path, backends: Iterable[str]
) -> None:
    """The flags of both agents' ``run``: ``-c``, ``--backend``, ``--once``."""
    add_config_flag(parser, default_config)
    parser.add_argument(
        "--backend",
        choices=sorted(backends),
        help="override the configuration's backend",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="run one tick, print the status and exit (no control socket)",
    )


def check_standalone(backend: str, daemon_backend: str) -> None:
    """Refuse the emulator's backend for a daemon of its own.

    Raises:
        ConfigError: ``backend`` is ``emu``, naming ``daemon_backend`` instead.
    """
    if backend == "emu":
        raise ConfigError(
            "backend 'emu' is the emulator's: it runs inside `hypertier run` and "
            f"the tests, not as a daemon; use --backend {daemon_backend}"
        )


def config_path(args: argparse.Namespace, default: Path) -> Path | None:
    """The file of ``--config``, else ``default`` if it exists, else None
    (built-in defaults)."""
    path: Path | None = args.config
    if path is None and default.exists():
        path = default
    return path


def add_socket_flags(parser: argparse.ArgumentParser, default_config: Path) -> None:
    """``-c/--config`` and ``--socket``, the flags of a command that calls the
    daemon (see :func:`client`)."""
    add_config_flag(parser, default_config)
    parser.add_argument(
        "--socket",
        type=Path,
        default=None,
        metavar="PATH",
        help="control socket (default: the configuration's)",
    )


def load_config(agent: Agent, args: argparse.Namespace) -> Any:
    """The configuration named by ``--config``, the default file, or defaults."""
    path = config_path(args, agent.default_config)
    return agent.config.load(path) if path is not None else agent.config.Config()


def client(agent: Agent, args: argparse.Namespace) -> ControlClient:
    """A client of the daemon at ``--socket``, or at the configuration's socket.

    :func:`main` puts ``agent`` in ``args.agent`` for the agents' own commands.
    """
    path = args.socket or load_config(agent, args).control_socket
    return ControlClient(path, agent.error_kinds)


@dataclass(frozen=True)
class _Builtin:
    """A command every agent has, made of functions of the agent's Agent."""

    HELP: str
    EPILOG: str
    add: Callable[[argparse.ArgumentParser], object]
    run: Callable[[argparse.Namespace], int]
    NOT_RUNNING_EXIT: int = EXIT_FAILURE

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        self.add(parser)

    def main(self, args: argparse.Namespace) -> int:
        return self.run(args)


def _status(agent: Agent, args: argparse.Namespace) -> int:
    status = client(agent, args).call("status")
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(agent.format_status(status))
    return EXIT_OK


def _add_status_flags(agent: Agent, parser: argparse.ArgumentParser) -> None:
    add_socket_flags(parser, agent.default_config)
    parser.add_argument(
        "--json", action="store_true", help="print the state as JSON, for scripts"
    )


def _request(agent: Agent, method: str, done: str, args: argparse.Namespace) -> int:
    client(agent, args).call(method)
    print(done)
    return EXIT_OK


def _config_check(agent: Agent, args: argparse.Namespace) -> int:
    agent.config.load(args.file)
    print(f"{args.file}: ok")
    return EXIT_OK


def _config_show(agent: Agent, args: argparse.Namespace) -> int:
    sys.stdout.write(agent.config.dumps(load_config(agent, args)))
    return EXIT_OK


def _builtins(agent: Agent) -> dict[tuple[str, ...], Command]:
    p, conf = agent.prog, agent.default_config
    socket_flags = partial(add_socket_flags, default_config=conf)
    return {
        ("status",): _Builtin(
            "show the running daemon's state",
            f"examples:\n  {p} status\n  {p} status --json | jq .\n"
            f"  {p} status --socket /tmp/{p}.sock\n"
            "exit status 3: no daemon is running (see 'systemctl status').\n",
            partial(_add_status_flags, agent),
            partial(_status, agent),
            NOT_RUNNING_EXIT=EXIT_NOT_RUNNING,
        ),
        ("reload",): _Builtin(
            "re-read the configuration file (the old one stays if it is invalid)",
            f"examples:\n  {p} reload\n  {p} reload -c {conf}\n",
            socket_flags,
            partial(_request, agent, "reload", "reloaded"),
        ),
        ("stop",): _Builtin(
            "stop the running daemon (what it placed or sized stays)",
            f"examples:\n  {p} stop\n  {p} stop --socket /run/hypertier/x.sock\n",
            socket_flags,
            partial(_request, agent, "stop", "stopping"),
        ),
        ("config", "check"): _Builtin(
            "validate a configuration file (exit 2 naming the bad key)",
            f"examples:\n  {p} config check {conf}\n",
            lambda parser: parser.add_argument(
                "file", type=Path, help="TOML file to validate"
            ),
            partial(_config_check, agent),
        ),
        ("config", "show"): _Builtin(
            "print the effective configuration (defaults included) as TOML",
            f"examples:\n  {p} config show      # defaults, or the default file\n"
            f"  {p} config show -c {conf} > effective.toml\n",
            partial(add_config_flag, default=conf),
            partial(_config_show, agent),
        ),
    }


_GROUPS = {"config": "validate a configuration file or print the effective one"}


def _commands(agent: Agent) -> dict[tuple[str, ...], Command]:
    common = _builtins(agent)
    ordered: dict[tuple[str, ...], Command] = dict(agent.commands)
    run = ordered.pop(("run",), None)
    return {**({("run",): run} if run else {}), **common, **ordered}


# -- the parser -----------------------------------------------------------------


_GLOBAL_FLAGS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("-v", "--verbose"), {"action": "count", "dest": "verbose", "default": 0,
                           "help": "more logging (-v: debug; default: info)"}),
    (("-q", "--quiet"), {"action": "count", "dest": "quiet", "default": 0,
                         "help": "less logging (-q: warnings, -qq: errors only)"}),
    (("--log-format",), {"choices": LOG_FORMATS, "dest": "log_format",
                         "default": "text",
                         "help": "stderr log format (json: one object per line)"}),
)  # fmt: skip


def _add_global_flags(parser: argparse.ArgumentParser, depth: int) -> None:
    """-v/-q/--log-format on every parser of the tree. Below the top they count
    into a destination of their own level and have no default, so ``-v run -v``
    is two ``-v`` and a subcommand never resets what the top set."""
    for flags, spec in _GLOBAL_FLAGS:
        kwargs = dict(spec)
        if depth:
            kwargs["dest"] = f"{spec['dest']}_{depth}"
            kwargs["default"] = argparse.SUPPRESS
        parser.add_argument(*flags, **kwargs)


def _verbosity(args: argparse.Namespace) -> int:
    counts: dict[str, int] = {
        k: v for k, v in vars(args).items() if k.startswith(("verbose", "quiet"))
    }
    return sum(v if k.startswith("verbose") else -v for k, v in counts.items())


def _log_format(args: argparse.Namespace) -> str:
    """The deepest ``--log-format`` given (the top's default otherwise)."""
    given = sorted(k for k in vars(args) if k.startswith("log_format"))
    return str(getattr(args, given[-1]))


def _subparser(
    action: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    helptext: str,
    epilog: str,
    depth: int,
) -> argparse.ArgumentParser:
    parser = action.add_parser(
        name,
        help=helptext,
        description=helptext,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_flags(parser, depth)
    return parser


def build_parser(agent: Agent) -> argparse.ArgumentParser:
    """The whole argparse tree of ``agent`` (also read by hypertier_common.clidoc)."""
    parser = argparse.ArgumentParser(
        prog=agent.prog,
        description=agent.description,
        epilog=agent.examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {agent.version}"
    )
    _add_global_flags(parser, 0)
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for path, command in _commands(agent).items():
        if len(path) == 1:
            sub = _subparser(top, path[0], command.HELP, command.EPILOG, 1)
        else:
            group, name = path
            if group not in groups:
                helptext = {**_GROUPS, **agent.groups}.get(group, f"{group} commands")
                examples = "examples:\n" + "".join(
                    f"  {agent.prog} {group} {p[1]} --help\n"
                    for p in _commands(agent)
                    if p[0] == group and len(p) == 2
                )
                gp = _subparser(top, group, helptext, examples, 1)
                groups[group] = gp.add_subparsers(
                    dest="subcommand", required=True, metavar="SUBCOMMAND"
                )
            sub = _subparser(groups[group], name, command.HELP, command.EPILOG, 2)
        command.add_arguments(sub)
        sub.set_defaults(handler=command)
    return parser


# -- main -------------------------------------------------------------------------


def _nothing() -> None:
    pass


def main(agent: Agent, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the subcommand and return its exit code."""
    parser = build_parser(agent)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    setup_logging(_verbosity(args), fmt=_log_format(args))
    command: Command = args.handler
    args.agent = agent
    daemon = bool(getattr(command, "DAEMON", False))
    restore: Callable[[], None] = _nothing
    if daemon:
        args.signals = Signals()
        restore = args.signals.install()
    try:
        return command.main(args)
    except ConfigError as err:
        code, message = EXIT_USAGE, str(err)
    except NotRunning as err:
        code = getattr(command, "NOT_RUNNING_EXIT", EXIT_FAILURE)
        message = f"{err}; see 'systemctl status {agent.prog}'"
    except AgentError as err:
        code, message = EXIT_FAILURE, str(err)
    except Exception:
        log.exception("%s: internal error (a bug; please report it)", agent.prog)
        return EXIT_FAILURE
    finally:
        restore()
    if daemon:
        logging.getLogger(agent.prog).error("%s", message)
    else:
        print(f"{agent.prog}: error: {message}", file=sys.stderr)
    return code
