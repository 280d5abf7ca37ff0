import os
import sys

# The reliability tests share helpers (_op_cases.py, bad_input_cases.py) from this folder.
sys.path.insert(0, os.path.dirname(__file__))
