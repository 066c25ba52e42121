from benchbase.cli import main

raise SystemExit(main())
