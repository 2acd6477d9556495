"""``python -m orthosparse ...``: the same command line as the ``orthosparse`` script."""

from orthosparse.lab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
