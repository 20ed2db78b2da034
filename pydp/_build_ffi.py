"""Generates the C source of the cffi API-mode module ``pydp._pydp``.

The cdef is the part of ``native/include/pydp.h`` between the ``cdef-begin`` and ``cdef-end`` markers, so the
shared-memory layout and the C API are written once, in that header. CMake runs this script and compiles its
output together with the fast-path libraries::

    python3 pydp/_build_ffi.py OUT.c
"""

import pathlib
import re
import sys

import cffi

HEADER = pathlib.Path(__file__).resolve().parent.parent / "native" / "include" / "pydp.h"


def cdef_text(header: pathlib.Path = HEADER) -> str:
    text = header.read_text()
    m = re.search(r"/\* cdef-begin \*/(.*)/\* cdef-end \*/", text, re.S)
    if m is None:
        raise SystemExit(f"{header}: no cdef-begin/cdef-end markers")
    return m.group(1)


def make_ffi() -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef(cdef_text())
    ffi.set_source("pydp._pydp", '#include "pydp.h"')
    return ffi


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: _build_ffi.py OUT.c", file=sys.stderr)
        return 2
    out = pathlib.Path(argv[1])
    tmp = out.with_suffix(".tmp.c")
    make_ffi().emit_c_code(str(tmp))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
