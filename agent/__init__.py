"""pykata's guest agent: Kata's agent API over ttrpc, containers run with runc.

Run it with `python3 -m agent`. Importing the package costs nothing: every
module is loaded by the entry point or on first use.
"""

__version__ = "0.1.0"
