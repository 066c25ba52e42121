"""``python -m benchbase``: the same command line as ``benchbase`` (:mod:`benchbase.cli`)."""

from benchbase.cli import main

raise SystemExit(main())
