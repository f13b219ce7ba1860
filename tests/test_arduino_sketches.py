"""The example sketches compile (syntax and types) with g++ against a stub ``Arduino.h``: not a
board build, but it catches a sketch that drifted from C++ while the protocol changed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

STUB = """
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#define HIGH 1
#define LOW 0
#define OUTPUT 1
#define INPUT_PULLUP 2
#define LED_BUILTIN 13
struct SerialT {
  void begin(long) {}
  int available() { return 0; }
  int read() { return -1; }
  void print(const char *) {}
  void print(char) {}
  void println(const char *) {}
  void println() {}
};
static SerialT Serial;
inline void pinMode(int, int) {}
inline void digitalWrite(int, int) {}
inline int digitalRead(int) { return 1; }
inline unsigned long millis() { return 0; }
"""

SKETCHES = sorted((REPO / "examples" / "arduino").glob("*/*.ino"))


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
@pytest.mark.parametrize("sketch", SKETCHES, ids=[s.stem for s in SKETCHES])
def test_sketch_compiles_against_a_stub_arduino_h(tmp_path: Path, sketch: Path) -> None:
    (tmp_path / "Arduino.h").write_text(STUB)
    done = subprocess.run(["g++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", f"-I{tmp_path}",
                           "-x", "c++", str(sketch)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
