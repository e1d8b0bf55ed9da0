from cdcflow.cli import main

raise SystemExit(main())
