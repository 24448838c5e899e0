from medgem.cli import main

raise SystemExit(main())
