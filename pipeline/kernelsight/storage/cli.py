"""`ks storage status|rollup|prune` (also `python -m kernelsight.storage ...`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import orjson
import typer

from .. import db
from ..config import ConfigError, load as load_config

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="The database's rollups, retention and size (ks-agent runs this every minute).")
config_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                         help="The config file every command reads.")

DATA_HELP = "data directory (default $KS_DATA_DIR or ./data)"
CONFIG_HELP = "config file (default $KS_CONFIG, else /etc/kernelsight/config.toml, else built-in defaults)"


def _cfg(path: Optional[Path]):
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"ks: {e}", file=sys.stderr)
        raise typer.Exit(2) from None


def _run(data_dir: Optional[Path], config: Optional[Path], rollup: bool, prune: bool, as_json: bool) -> None:
    from .housekeeping import Housekeeper

    cfg = _cfg(config)
    directory = data_dir.absolute() if data_dir else db.data_dir()
    try:
        conn = db.connect(db.db_path(directory), create=False)
    except db.StoreError as e:
        print(f"ks storage: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    try:
        st = Housekeeper(conn, directory, cfg).run(do_rollup=rollup, do_prune=prune, rotate=prune)
    finally:
        conn.close()
    d = st.to_dict()
    d["detail"].pop("prune_txn_ms", None)
    if as_json:
        sys.stdout.write(orjson.dumps(d, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(f"rollup rows written {st.rollup_rows:,}, rows deleted {st.deleted_rows:,} in {st.batches} batches "
              f"(longest write transaction {st.txn_max_ms:.1f} ms), pages vacuumed {st.vacuumed_pages:,}, "
              f"in use {st.used_bytes / 2**20:,.1f} MiB, {st.seconds:.1f} s")


@app.command(help="Roll up every closed minute not rolled up yet.\n\nExample: ks storage rollup --data-dir ./data")
def rollup(data_dir: Optional[Path] = typer.Option(None, help=DATA_HELP),
           config: Optional[Path] = typer.Option(None, help=CONFIG_HELP),
           as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    _run(data_dir, config, True, False, as_json)


@app.command(help="Roll up, then apply retention and the size cap, vacuum, checkpoint and rotate logs.\n\n"
             "Example: ks storage prune --data-dir ./data")
def prune(data_dir: Optional[Path] = typer.Option(None, help=DATA_HELP),
          config: Optional[Path] = typer.Option(None, help=CONFIG_HELP),
          as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    _run(data_dir, config, True, True, as_json)


@app.command(help="Database size, oldest and newest raw and rollup data, bytes per day.\n\nExample: ks storage status")
def status(data_dir: Optional[Path] = typer.Option(None, help=DATA_HELP),
           config: Optional[Path] = typer.Option(None, help=CONFIG_HELP),
           as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    from . import status_lines, storage_status

    st = storage_status(data_dir.absolute() if data_dir else db.data_dir(), _cfg(config))
    if as_json:
        sys.stdout.write(orjson.dumps(st, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print("\n".join(status_lines(st)))


@config_app.command(help="Print the effective config as TOML, each key with its meaning.\n\nExample: ks config show")
def show(config: Optional[Path] = typer.Option(None, help=CONFIG_HELP)) -> None:
    from ..config import config_path, to_toml

    cfg = _cfg(config)
    src = config_path(config)
    print(f"# effective config; source: {src if src else 'built-in defaults'}")
    print(to_toml(cfg), end="")


def main() -> None:
    app()
