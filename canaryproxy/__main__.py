from canaryproxy.cli import main

raise SystemExit(main())
