import sys

from foresight.cli.main import main

sys.exit(main())
