"""`python -m mf_backend ...` — see cli.py."""

from mf_backend.logs import route_logs_to_stderr

route_logs_to_stderr()  # before torch/tqdm are imported: stdout belongs to the protocol

from mf_backend.cli import main  # noqa: E402

raise SystemExit(main())
