"""The package's functions stay short enough to read at once: none in dmm/ over MAX_LINES lines
unless a comment on its `def` line says why (`# long: <reason>`). Read with ast, nothing imported."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60
FILES = sorted((ROOT / "dmm").rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_no_long_functions(path):
    lines = path.read_text().splitlines()
    long = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_LINES and "# long:" not in lines[node.lineno - 1]:
                long.append(f"{node.name} ({n} lines, line {node.lineno})")
    assert not long, (f"{path.relative_to(ROOT)}: over {MAX_LINES} lines without a `# long:` "
                      f"reason on the def line: {', '.join(long)}; split them")
