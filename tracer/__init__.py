"""tapttrace: follow frames through the Linux bridge to a VM's tap, and say why they stop."""

__version__ = "0.1.0"
