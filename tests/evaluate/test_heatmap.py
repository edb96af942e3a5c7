"""plots.heatmap_png: every cell with a number is coloured by it and carries its note; a cell
without one is grey and says so, never a colour a number would have."""

import numpy as np
import pytest

from mdx.evaluate import plots


def test_cells_their_colours_and_notes(tmp_path, monkeypatch):
  drawn = {}
  save = plots._save

  def keep(fig, path):
    drawn["fig"] = fig
    drawn["texts"] = [(t.get_position(), t.get_text(), t.get_color()) for t in fig.axes[0].texts]
    drawn["image"] = fig.axes[0].images[0]
    return save(fig, path)

  monkeypatch.setattr(plots, "_save", keep)
  values = np.array([[0.9, np.nan, 0.3], [0.5, 0.75, 1.0]])
  notes = [["0.900\n[0.85, 0.95]", "ignored", "0.300"], ["0.500", "0.750", "1.000"]]
  path = plots.heatmap_png(
    str(tmp_path / "figures" / "h.png"), values, ["A", "B"], ["x", "y", "z"], notes, label="AUROC"
  )
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  texts = {(round(x), round(y)): (text, color) for (x, y), text, color in drawn["texts"]}
  assert len(texts) == 6
  assert texts[(0, 0)][0] == "0.900\n[0.85, 0.95]"
  assert texts[(1, 0)] == ("not evaluable", "dimgray")  # column 1, row 0: the nan cell
  assert texts[(1, 1)][0] == "0.750" and texts[(2, 0)][0] == "0.300"
  image = drawn["image"]
  data = image.get_array()
  assert data.mask[0, 1] and not data.mask.any(where=~np.isnan(values))  # only nan is masked
  cmap = image.get_cmap()
  assert cmap.get_bad() == pytest.approx((0xD9 / 255, 0xD9 / 255, 0xD9 / 255, 1.0))
  # the colours span 0.5..1: below chance takes the lowest colour, 1.0 the highest
  assert image.norm.vmin == 0.5 and image.norm.vmax == 1.0
  assert np.allclose(cmap(image.norm(0.3)), cmap(0.0)) and np.allclose(
    cmap(image.norm(1.0)), cmap(1.0)
  )
  # a dark cell's note is white, a light one's black (readable on its colour)
  assert texts[(0, 1)][1] == "white"  # 0.5: the deep red end
  assert texts[(1, 1)][1] == "black"  # 0.75: the pale middle
  ticks = [t.get_text() for t in drawn["fig"].axes[0].get_xticklabels()]
  assert ticks == ["x", "y", "z"]
