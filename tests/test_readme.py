"""The README's quick example runs as written (keeps the README true)."""
import re
from pathlib import Path


def test_readme_quick_example_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Quick example\n\n```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["y"].shape == (16, 32, 5, 5)
    assert scope["bias"].grad is not None and scope["q"].grad is not None
