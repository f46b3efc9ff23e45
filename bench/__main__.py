"""`python -m bench --quick` (make bench) or `--full` (make bench-full)."""

from .run import main

main()
