import sys

from spotfill_worker.worker import main

sys.exit(main())
