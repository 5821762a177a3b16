"""Size-weighted losses and the sizing metrics, checked against hand-computed values."""
import numpy as np
import pytest
import torch

from trainer.losses import (MAIN_CLASS_WEIGHTS, ROUTING_CLASS_WEIGHTS, CombinedSizeLoss, SizeClassificationLoss,
                            SizeRegressionLoss, reference_losses, size_class_labels, size_class_weights)
from trainer.metrics import (balanced_accuracy, confusion_matrix, evaluate_classes, evaluate_sizes, f1_macro,
                             f1_weighted)


# ---- losses ----

def test_size_class_weights_follow_the_thresholds():
    sizes = torch.tensor([0.5, 5.0, 5.01, 9.99, 10.0, 20.0])
    torch.testing.assert_close(size_class_weights(sizes, MAIN_CLASS_WEIGHTS),
                               torch.tensor([1.0, 1.0, 3.0, 3.0, 5.0, 5.0]))
    torch.testing.assert_close(size_class_weights(sizes, ROUTING_CLASS_WEIGHTS),
                               torch.tensor([1.0, 1.0, 5.0, 5.0, 10.0, 10.0]))
    assert size_class_labels(sizes, "triclass").tolist() == [0, 0, 1, 1, 2, 2]
    assert size_class_labels(sizes, "binary").tolist() == [0, 0, 0, 0, 1, 1]


def test_regression_loss_by_hand():
    pred = {"size_mm": torch.tensor([[4.0], [7.0], [13.0]])}
    target = {"size_mm": torch.tensor([3.0, 7.5, 10.0])}
    # errors 1.0, 0.5, 3.0; Smooth-L1(beta=1): 0.5, 0.125, 2.5; weights (main) 1, 3, 5
    expected = (0.5 * 1 + 0.125 * 3 + 2.5 * 5) / 3
    assert float(SizeRegressionLoss()(pred, target)) == pytest.approx(expected)
    # routing weights 1, 5, 10
    expected_r = (0.5 * 1 + 0.125 * 5 + 2.5 * 10) / 3
    assert float(SizeRegressionLoss(class_weights=ROUTING_CLASS_WEIGHTS)(pred, target)) == pytest.approx(expected_r)
    # combination: 0.5 L1 + 2 L2 (+ no smooth-L1), unweighted classes
    mixed = SizeRegressionLoss(smooth_l1=0.0, l1=0.5, l2=2.0, class_weights=(1, 1, 1))
    expected_m = np.mean([0.5 * e + 2.0 * e * e for e in (1.0, 0.5, 3.0)])
    assert float(mixed(pred, target)) == pytest.approx(expected_m)
    with pytest.raises(ValueError, match="coefficients"):
        SizeRegressionLoss(smooth_l1=0.0)
    with pytest.raises(ValueError, match="three"):
        SizeRegressionLoss(class_weights=(1, 2))


def test_classification_and_combined_losses():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    targets = {"size_mm": torch.tensor([4.0, 12.0, 12.0])}        # classes 0, 2, 2
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2, 2]))
    ce = SizeClassificationLoss("triclass")
    assert float(ce({"logits": logits}, targets)) == pytest.approx(float(expected))
    explicit = {"size_mm": targets["size_mm"], "class_index": torch.tensor([1, 1, 1])}
    assert float(ce({"logits": logits}, explicit)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, torch.tensor([1, 1, 1]))))
    with pytest.raises(ValueError, match="needs 2 logits"):
        SizeClassificationLoss("binary")({"logits": logits}, targets)

    outputs = {"logits": logits, "size_mm": torch.tensor([[4.0], [12.0], [11.0]])}
    both = CombinedSizeLoss(SizeRegressionLoss(), ce, regression_weight=2.0, classification_weight=0.5)
    reg = SizeRegressionLoss()(outputs, targets)
    assert float(both(outputs, targets)) == pytest.approx(2.0 * float(reg) + 0.5 * float(expected))
    main, routing = reference_losses("both")
    assert float(routing(outputs, targets)) >= float(main(outputs, targets))


# ---- metrics ----

def test_confusion_and_scores_by_hand():
    true = [0, 0, 1, 1, 2, 2, 2]
    pred = [0, 1, 1, 1, 2, 0, 2]
    cm = confusion_matrix(true, pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    # per-class F1: c0 2*1/(2+2)=0.5, c1 2*2/(3+2)=0.8, c2 2*2/(2+3)=0.8
    assert f1_weighted(cm) == pytest.approx((0.5 * 2 + 0.8 * 2 + 0.8 * 3) / 7)
    assert f1_macro(cm) == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    assert balanced_accuracy(cm) == pytest.approx((1 / 2 + 2 / 2 + 2 / 3) / 3)
    with pytest.raises(ValueError, match="labels must lie"):
        confusion_matrix([0, 3], [0, 1], 3)


def test_evaluate_sizes_per_frame_and_per_polyp():
    true_mm = [4.0, 4.0, 4.0, 7.0, 7.0, 12.0, 12.0, 12.0]
    pred_mm = [3.0, 6.0, 4.5, 7.0, 11.0, 9.0, 13.0, 14.0]
    polyp = ["a", "a", "a", "b", "b", "c", "c", "c"]
    m = evaluate_sizes(pred_mm, true_mm, polyp)
    v = m.values
    assert v["frame_mae_mm"] == pytest.approx((1 + 2 + 0.5 + 0 + 4 + 3 + 1 + 2) / 8)
    # frame triclass: true 0,0,0,1,1,2,2,2; pred 0,1,0,1,2,1,2,2
    assert m.confusion["frame_triclass"].tolist() == [[2, 1, 0], [0, 1, 1], [0, 1, 2]]
    # frame binary (>=10): true 0,0,0,0,0,1,1,1; pred 0,0,0,0,1,0,1,1 -> tp 2, fp 1, fn 1
    assert m.confusion["frame_binary"].tolist() == [[4, 1], [1, 2]]
    assert v["frame_binary_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert v["frame_binary_balanced_accuracy"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    # per polyp: medians a=4.5, b=9.0, c=13.0 against 4, 7, 12
    assert v["polyp_count"] == 3
    assert v["polyp_mae_mm"] == pytest.approx((0.5 + 2.0 + 1.0) / 3)
    assert m.confusion["polyp_triclass"].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert v["polyp_triclass_f1_weighted"] == 1.0 and v["polyp_binary_f1"] == 1.0
    assert m.confusion_lists()["polyp_binary"] == [[2, 0], [0, 1]]
    assert all(isinstance(x, float) for x in v.values())
    assert "polyp_mae_mm" not in evaluate_sizes(pred_mm, true_mm).values
    with pytest.raises(ValueError, match="8 predictions but 2 targets"):
        evaluate_sizes(pred_mm, [1.0, 2.0])


def test_evaluate_classes_uses_majority_per_polyp():
    true_mm = [3.0, 3.0, 3.0, 12.0, 12.0]
    pred = [0, 1, 1, 2, 0]              # polyp a: majority 1; polyp b: tie 0/2 -> larger class 2
    m = evaluate_classes(pred, true_mm, "triclass", ["a", "a", "a", "b", "b"])
    assert m.confusion["frame_triclass"].tolist() == [[1, 2, 0], [0, 0, 0], [1, 0, 1]]
    assert m.confusion["polyp_triclass"].tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert m.values["polyp_binary_f1"] == 1.0
    binary = evaluate_classes([0, 1, 1], [4.0, 11.0, 6.0], "binary")
    assert binary.confusion["frame_binary"].tolist() == [[1, 1], [0, 1]]
    assert binary.values["frame_binary_f1"] == pytest.approx(2 / 3)
