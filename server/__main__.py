"""`python -m server`, the same as `scout-server`."""

from .main import main

main()
