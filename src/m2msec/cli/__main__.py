"""``python -m m2msec.cli``."""

from m2msec.cli.main import main

main()
