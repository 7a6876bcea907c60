import sys

from qonnx.cli import main

sys.exit(main())
