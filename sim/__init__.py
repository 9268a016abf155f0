"""Local stand-ins: vLLM-API simulator, IMDS emulator, and the demo fleet."""
