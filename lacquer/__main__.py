from lacquer.cli import main

raise SystemExit(main())
