"""dtmfmask: the sans-I/O DSP engine (G.711, DTMF detection, RFC 4733, masking)."""

__version__ = "0.1.0"
