"""``python -m simclrv2`` (what ``torchrun -m simclrv2 ...`` runs)."""

from .cli import main

raise SystemExit(main())
