from sealgguf.cli import main

raise SystemExit(main())
