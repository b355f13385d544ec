"""`python -m mf_backend ...` — see cli.py."""

from mf_backend.environment import limit_heap_fragmentation
from mf_backend.logs import route_logs_to_stderr

route_logs_to_stderr()  # before torch/tqdm are imported: stdout belongs to the protocol
limit_heap_fragmentation()  # host memory flat on long full-resolution clips

from mf_backend.cli import main  # noqa: E402

raise SystemExit(main())
