"""What every long-running ks-* service's command line shares: --data-dir and --config, and one
config section loaded with a clear message (exit 2) when the file is wrong."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import db


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--data-dir", type=Path, default=None, help="data directory (default $KS_DATA_DIR or ./data)")
    p.add_argument("--config", default=None, help="config file (default $KS_CONFIG, else /etc/kernelsight/config.toml)")
    return p


def data_dir(args: argparse.Namespace) -> Path:
    return args.data_dir.absolute() if args.data_dir else db.data_dir()


def config_section(prog: str, args: argparse.Namespace, section: str):
    """The config file's [section], or None after printing why the file was refused."""
    from .config import ConfigError, load

    try:
        return getattr(load(args.config), section)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None
