"""The serial bridge: protocol v1 lines, pacing, the port and robot-action calls for one UART."""
