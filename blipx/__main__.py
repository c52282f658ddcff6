from blipx.cli import main

raise SystemExit(main())
