from cmpf.cli import main

raise SystemExit(main())
