"""What the atheris harnesses share: a private scratch directory per fuzzing process."""

import os
import re
import shutil


def private_dir(kind: str, base: str) -> str:
    """base/pydp-fuzz-KIND-PID for this process, made empty. libFuzzer ends the process with exit() from C, so no
    atexit handler runs: the directories of processes that are gone are removed here instead."""
    for name in os.listdir(base):
        m = re.fullmatch(rf"pydp-fuzz-{kind}-(\d+)", name)
        if m and not os.path.exists(f"/proc/{m[1]}"):
            shutil.rmtree(os.path.join(base, name), True)
    path = os.path.join(base, f"pydp-fuzz-{kind}-{os.getpid()}")
    shutil.rmtree(path, True)
    os.makedirs(path, 0o700)
    return path
