#!/usr/bin/env -S python3 -P
"""Atheris harness of the config loader (pydp/config.py): the bytes of a config file give a validated
ApplianceConfig or a ConfigError that names the problem; any other exception is a bug. A config that loads is
written back (dumps, with secrets) and must load again to the same config.

    scripts/fuzz.sh config
    python -P tests/fuzz/fuzz_config.py -runs=1 tests/fuzz/corpus/config/*

The file is written to a private temporary directory (the next run removes it) and read with config.load, the data
plane's own path (UTF-8 check included).
"""

import os
import sys
import tempfile

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # -P leaves the harness's folder out
from fuzzdirs import private_dir  # noqa: E402

with atheris.instrument_imports():
    from pydp import config



_dir = private_dir("config", tempfile.gettempdir())
PATH = os.path.join(_dir, "appliance.toml")


def one(data: bytes) -> None:
    with open(PATH, "wb") as f:
        f.write(data)
    try:
        cfg = config.load(PATH)
    except config.ConfigError as exc:
        if not exc.errors or not all(isinstance(e, str) and e for e in exc.errors):
            raise AssertionError(f"a ConfigError without a message: {exc.errors!r}") from None
        return
    text = config.dumps(cfg, include_secrets=True)
    again = config.loads(text, "<dumps>")
    if again != cfg:
        raise AssertionError(f"the config changes through dumps/loads:\n{text}")


def main() -> None:
    atheris.Setup(sys.argv, lambda data: one(bytes(data)))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
