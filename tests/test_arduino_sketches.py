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


ESP32_STUBS = {
    "WiFi.h": """
#include <Arduino.h>
#define WL_CONNECTED 3
struct WiFiClass { void begin(const char *, const char *) {} int status() { return WL_CONNECTED; } };
static WiFiClass WiFi;
struct WiFiClient {};
""",
    "PubSubClient.h": """
#include <Arduino.h>
struct PubSubClient {
  explicit PubSubClient(WiFiClient &) {}
  bool connected() { return true; }
  bool connect(const char *) { return true; }
  bool subscribe(const char *, uint8_t) { return true; }
  bool publish(const char *, const char *) { return true; }
  bool loop() { return true; }
  void setServer(const char *, uint16_t) {}
  bool setBufferSize(uint16_t) { return true; }
  void setCallback(void (*)(char *, uint8_t *, unsigned int)) {}
};
""",
}


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_esp32_mqtt_sketch_compiles_against_stub_wifi_and_pubsubclient(tmp_path: Path) -> None:
    """examples/esp32/edgebot_mqtt: the PubSubClient calls it makes exist with these signatures."""
    (tmp_path / "Arduino.h").write_text("#pragma once\n" + STUB + "typedef uint8_t byte;\n"
                                        "inline void delay(unsigned long) {}\n")
    for name, text in ESP32_STUBS.items():
        (tmp_path / name).write_text(text)
    sketch = REPO / "examples" / "esp32" / "edgebot_mqtt" / "edgebot_mqtt.ino"
    done = subprocess.run(["g++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", f"-I{tmp_path}",
                           "-include", "Arduino.h", "-x", "c++", str(sketch)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
