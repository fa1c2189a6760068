import sys

from experiments.expansion.run import main

sys.exit(main())
