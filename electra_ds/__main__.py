import logging
import os
import sys

from electra_ds.cli import main

status = main()
if status and int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1) > 1:
    # One rank of a multi-process run, ending in an error it has reported (or left to rank 0): leave without the
    # interpreter's teardown. There a native thread a library left joinable can abort the process (SIGABRT,
    # "terminate called without an active exception"), and the status becomes 134 instead of this one: seen once
    # in CI, on rank 1 after a full-disk error both ranks had raised together.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
sys.exit(status)
