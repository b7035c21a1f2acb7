from csvcompress.cli.main import main

raise SystemExit(main())
