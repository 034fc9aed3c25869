"""The `dmsim` entry point: wires subcommands, imports them only when run.

Exit codes (README): 0 success; 1 a verification or --fail-on gate failed; 2
usage error (a wrong flag, an -o dmsim will not write); 3 bad input (a file the
user gave: trace, machine, policy, scenario); 4 --verify found no checkpoints;
70 internal error; 73 an output cannot be written.
"""

from __future__ import annotations

import importlib

import click

from .. import __version__

COMMANDS = {
    "replay": ("dmsim.cli.replay", "replay", "Replay a trace and print the direct-map counters."),
    "convert": ("dmsim.cli.convert", "convert", "Write a trace in dmsim's native format."),
    "gen": ("dmsim.cli.gen", "gen", "Generate a workload trace from a scenario (dmsim/configs/scenarios/)."),
    "diff": ("dmsim.cli.diff", "diff", "Replay a trace under several policies and compare."),
    "policies": ("dmsim.cli.policies", "policies", "List the allocation and merge policies."),
}


class LazyGroup(click.Group):
    """Load a subcommand's module only when it runs: `dmsim --help` stays instant."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dmsim")
def cli():
    """dmsim: replay kernel memory traces against a simulated x86-64 direct map.

    \b
    Exit codes: 0 ok, 1 verification/gate failed, 2 usage error (a wrong flag),
    3 bad input (a file: names file:line), 4 --verify had no checkpoints,
    70 internal error, 73 cannot write output.
    """
