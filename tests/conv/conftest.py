"""Lets the conv tests import their shared helpers (conv_testutil) under --import-mode=importlib."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
