"""Overall accuracy, mIoU, the obstructed-region variant and BIS (handshake paper Eq. 7)."""
import math

import numpy as np
import pytest

from collab_perception.runtime.metrics import IGNORE, ConfusionMatrix, SegmentationScore, bis, gap_recovered


def test_accuracy_and_miou_on_a_known_case():
    truth = np.array([[0, 0, 1, 1], [2, 2, 2, IGNORE]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 3]])
    cm = ConfusionMatrix(4)
    cm.update(pred, truth)
    assert cm.pixels == 7                              # the ignored pixel does not count
    assert cm.accuracy() == pytest.approx(5 / 7)
    iou = cm.iou()
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(2 / 3) and iou[2] == pytest.approx(2 / 3)
    assert math.isnan(iou[3])                          # class 3 is in neither truth nor prediction
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 2 / 3) / 3)
    # mean per-class accuracy (MASH Table I): recall of classes 0, 1, 2 (class 3 is absent from the truth)
    assert cm.mean_class_accuracy() == pytest.approx((1 / 2 + 2 / 2 + 2 / 3) / 3)
    assert math.isnan(ConfusionMatrix(2).mean_class_accuracy())


def test_region_mask_and_bad_ids():
    cm = ConfusionMatrix(3)
    truth = np.array([0, 1, 2, 2])
    cm.update(np.array([0, 0, 2, 1]), truth, mask=np.array([False, True, True, False]))
    assert cm.pixels == 2 and cm.accuracy() == 0.5
    with pytest.raises(ValueError, match='outside 0..2'):
        cm.update(np.array([5]), np.array([0]))


def test_bis_reproduces_the_paper_table():
    # handshake paper Table I, hidden target view (bounds 68.79 / 88.14), kbpf with 1 kB = 1024 bytes
    assert bis(84.57, 68.79, 88.14, 1028.03 * 1024) == pytest.approx(0.812, abs=5e-4)   # ours w/ msg
    assert bis(72.58, 68.79, 88.14, 4096 * 1024) == pytest.approx(0.049, abs=5e-4)      # CatAll
    assert bis(70.44, 68.79, 88.14, 1024 * 1024) == pytest.approx(0.085, abs=5e-4)      # Compression
    assert math.isnan(bis(80, 70, 70, 1000)) and math.isnan(bis(80, 70, 90, 0))
    assert gap_recovered(84.57, 68.79, 88.14) == pytest.approx(0.8155, abs=1e-4)        # the paper's 81.5%


def test_segmentation_score_summary():
    score = SegmentationScore(2)
    score.add(np.array([0, 1]), np.array([0, 1]), frame_bytes=100, region=np.array([True, False]),
              selected_correctly=True)
    score.add(np.array([0, 0]), np.array([0, 1]), frame_bytes=300, selected_correctly=False)
    s = score.summary()
    assert s['frames'] == 2 and s['overall_accuracy'] == 0.75 and s['bytes_per_frame'] == 200
    assert s['region_accuracy'] == 1.0 and s['selection_accuracy'] == 0.5


def test_auc_is_the_share_of_positive_negative_pairs_ranked_right():
    from collab_perception.runtime.metrics import auc
    labels = np.array([False, True, False, True, False])
    assert auc(np.array([0.1, 0.9, 0.2, 0.8, 0.3]), labels) == 1.0
    assert auc(np.array([0.9, 0.1, 0.8, 0.2, 0.7]), labels) == 0.0
    # one positive (0.4) below one of three negatives (0.5): 5 of the 6 pairs right
    assert auc(np.array([0.1, 0.4, 0.5, 0.8, 0.3]), labels) == pytest.approx(5 / 6)
    assert np.isnan(auc(np.array([0.1, 0.2]), np.array([True, True])))
