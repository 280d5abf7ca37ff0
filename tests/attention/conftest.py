import os
import sys

# The tests import their float64 reference (_attention_reference.py) from this folder.
sys.path.insert(0, os.path.dirname(__file__))
