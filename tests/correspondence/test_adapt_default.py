"""``adapt.run``'s default propagation method is the one the model card's benchmark table says: the learned model
only where it is at least as good as raw pixels on both birds_dev and the flight benchmark."""
import re
from pathlib import Path

import yaml

from adapt.config import AdaptConfig

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- adapt-default-table -->"


def _table_rows() -> dict[str, tuple[float, float]]:
    """Method (first cell's code span) -> (birds_dev, flight) J&F from the marked table of the model card (the
    last figure of a "before -> after" cell)."""
    text = (ROOT / "correspondence" / "weights" / "MODEL_CARD.md").read_text()
    assert MARKER in text, f"model card: no {MARKER} table"
    rows = {}
    for line in text.split(MARKER, 1)[1].lstrip().splitlines():
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        name = re.match(r"`([a-z]+)`", cells[0])
        if name and name.group(1) not in rows:  # the first row of a method is its default settings
            rows[name.group(1)] = (float(cells[1].split()[-1]), float(cells[2].split()[-1]))
    return rows


def test_the_adapt_default_method_is_the_one_the_benchmark_table_says():
    rows = _table_rows()
    pixels, learned = rows["pixels"], rows["learned"]
    expected = "learned" if learned[0] >= pixels[0] and learned[1] >= pixels[1] else "pixels"
    assert AdaptConfig().correspondence.method == expected
    shipped = yaml.safe_load((ROOT / "configs" / "adapt.yaml").read_text())
    assert shipped["correspondence"]["method"] == expected
