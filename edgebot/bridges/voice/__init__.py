"""The voice bridges: speech-in (microphone → vosk + VAD) and speech-out (piper → speaker), and their audio parts."""
