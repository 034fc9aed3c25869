"""`dmsim policies`: the policy files in dmsim/configs/policies/."""

from __future__ import annotations

import json
import sys

import click

from .common import EXIT_BAD_INPUT, die, handle_errors, stdout_console

COLUMNS = ("name", "alloc", "merge", "description", "source")


@click.command()
@click.option("--format", "fmt", type=click.Choice(("text", "json")), default="text",
              show_default=True,
              help="text: a table (aligned plain text when stdout is not a terminal); json.")
@handle_errors
def policies(fmt):
    """List the policies --policy can name (dmsim/configs/policies/*.yaml).

    Compose an allocation policy and a merge policy with `+`, e.g.
    `--policy migrate_unmapped+cpa_merge` (docs/policies.md).
    """
    from ..policy import POLICY_DIR, PolicyError, _shown, is_parameters, list_policies

    try:
        found = list_policies()
    except PolicyError as e:  # a file in the policy directory that is malformed
        die(f"bad policy file: {e}", EXIT_BAD_INPUT)
    if fmt == "json":
        doc = {"directory": _shown(POLICY_DIR),
               "policies": [{**p.to_json(), "parameters_only": is_parameters(POLICY_DIR, p.name)}
                            for p in found]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    params_only = {p.name for p in found if is_parameters(POLICY_DIR, p.name)}
    rows = [(p.name, *(("(parameters)", "-") if p.name in params_only else (p.alloc, p.merge)),
             p.description, p.source) for p in found]
    con = stdout_console()
    if con.is_terminal:
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"policies ({_shown(POLICY_DIR)}/)", title_justify="left")
        for col in COLUMNS:
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(*(Text(cell) for cell in r))  # the files' text, not markup
        con.print(table)
        return
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(COLUMNS)]
    for r in [COLUMNS, *rows]:
        sys.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True))
                         .rstrip() + "\n")
