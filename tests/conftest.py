import os
import sys

# Make `import bro_mt` (and the other top-level scripts) work from the tests.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
