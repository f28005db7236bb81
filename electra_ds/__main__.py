import sys

from electra_ds.cli import main

sys.exit(main())
