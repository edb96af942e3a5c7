"""Largest-component post-processing: connectivity by hand, decided on validation cases where it
helps (a stray island) and refused where it hurts (a structure in two pieces), Dice by hand."""

import numpy as np
import pytest

from mdx.evaluate import postprocess as pp

NAMES = ("background", "liver", "kidneys", "spleen")


def _case():
  """truth: liver a 3x3x3 cube (27 voxels); kidneys two pieces, 3x3x3 and 2x2x2 (27 + 8); no
  spleen. The prediction is the truth plus one stray liver voxel far from the liver."""
  truth = np.zeros((16, 12, 12), np.int32)
  truth[1:4, 1:4, 1:4] = 1
  truth[8:11, 1:4, 1:4] = 2
  truth[8:10, 8:10, 8:10] = 2
  pred = truth.copy()
  pred[14, 10, 10] = 1
  return pred, truth


def test_keep_largest_component_26_connectivity_by_hand():
  labels = np.zeros((10, 10, 10), np.int32)
  labels[2:5, 2:5, 2:5] = 1  # 27 voxels
  labels[5, 5, 5] = 1  # touches the cube only by a corner: the same 26-connected component
  labels[8, 8, 0] = 1  # an island
  labels[0, 9, 9] = 2  # class 2 is not listed: left alone
  out = pp.keep_largest_component(labels, [1])
  assert (out == 1).sum() == 28 and out[5, 5, 5] == 1 and out[8, 8, 0] == 0
  assert out[0, 9, 9] == 2 and (labels[8, 8, 0] == 1)  # the input is not changed
  # equal sizes: the first component in raster order stays
  two = np.zeros((6, 6, 6), np.int32)
  two[0, 0, 0] = two[5, 5, 5] = 3
  kept = pp.keep_largest_component(two, [3])
  assert kept[0, 0, 0] == 3 and kept[5, 5, 5] == 0
  # regions: per channel, channel indices
  regions = np.zeros((10, 10, 10, 2), np.uint8)
  regions[..., 0] = labels == 1
  regions[..., 1] = labels == 1
  out = pp.keep_largest_component(regions, [1])
  assert out.dtype == np.uint8 and out[..., 0].sum() == 29 and out[..., 1].sum() == 28
  with pytest.raises(ValueError, match="foreground"):
    pp.keep_largest_component(labels, [0])
  with pytest.raises(ValueError, match="region 2"):
    pp.keep_largest_component(regions, [2])


def test_decide_keeps_it_where_it_helps_or_ties_and_not_where_it_hurts():
  pred, truth = _case()
  perfect = (truth.copy(), truth.copy())
  decision = pp.decide([(pred, truth), perfect], NAMES)
  # liver: 2 * 27 / (28 + 27) = 54/55 before, 1 after (the island goes); the perfect case 1 both
  assert decision["dice_before"]["liver"] == pytest.approx((54 / 55 + 1) / 2)
  assert decision["dice_after"]["liver"] == 1.0
  # kidneys: predicted right (1) but the step drops the smaller piece: 2 * 27 / (27 + 35) = 54/62
  assert decision["dice_before"]["kidneys"] == 1.0
  assert decision["dice_after"]["kidneys"] == pytest.approx(54 / 62)
  # spleen: absent from prediction and truth, Dice 1 both ways: a tie keeps it (harmless)
  assert decision["dice_before"]["spleen"] == decision["dice_after"]["spleen"] == 1.0
  assert decision["largest_component"] == ["liver", "spleen"]
  assert "background" not in decision["dice_before"]
  # applied to a new case: the liver island goes, both kidneys stay
  out = pp.apply(pred, decision, NAMES)
  np.testing.assert_array_equal(out, truth)
  with pytest.raises(ValueError, match="lungs"):
    pp.apply(pred, {"largest_component": ["lungs"]}, NAMES)


def test_decide_on_regions():
  pred, truth = _case()
  to_regions = lambda x: np.stack([x == 1, x == 2], -1).astype(np.uint8)
  decision = pp.decide([(to_regions(pred), to_regions(truth))], ("liver", "kidneys"))
  assert decision["largest_component"] == ["liver"]
  assert decision["dice_before"]["liver"] == pytest.approx(54 / 55)
  assert decision["dice_after"]["kidneys"] == pytest.approx(54 / 62)
  np.testing.assert_array_equal(
    pp.apply(to_regions(pred), decision, ("liver", "kidneys")), to_regions(truth)
  )
  with pytest.raises(ValueError, match="at least one"):
    pp.decide([], NAMES)
  with pytest.raises(ValueError, match="same shape"):
    pp.decide([(pred, truth[:8])], NAMES)
