from seismag.cli import main

raise SystemExit(main())
