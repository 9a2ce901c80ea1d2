import sys

from training_cli.main import main

sys.exit(main())
