"""Scale-out on Ray (docs/scale-out.md).

* cluster.py: connect to a Ray cluster (or start a 127.0.0.1-only local one), reserve N GPUs up front.
* worker.py:  the window worker actor: models loaded once, runs its share of every step's windows.
* sharded.py: one clip over N workers, window sums added and normalised on the driver every step.
* shots.py:   a queue of edit jobs over the cluster's GPUs (progress, cancel, retries).
* cli.py:     the `queue` command.

Ray is an optional extra (`install.py --with-ray`); nothing here is imported by the single-GPU path.
"""
