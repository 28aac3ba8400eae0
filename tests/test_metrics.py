from __future__ import annotations

import math

import pytest
import torch

from semseg.errors import DataError
from semseg.metrics import ConfusionMatrix, format_confusion, format_table

IGN = 255


def test_against_hand_computed_matrix_with_ignored_pixels() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGN, IGN]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = ConfusionMatrix(3, IGN)
    cm.update(pred, target)
    # rows = truth, cols = prediction; the two ignored pixels are not counted
    assert cm.mat.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    m = cm.compute()
    assert m["pixel_acc"] == pytest.approx(4 / 6)
    assert m["mean_acc"] == pytest.approx((1 / 2 + 2 / 2 + 1 / 2) / 3)
    # IoU = tp / (truth + pred - tp): class0 1/(2+2-1), class1 2/(2+3-2), class2 1/(2+1-1)
    assert m["iou"] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["fwiou"] == pytest.approx((2 / 6) * (1 / 3) + (2 / 6) * (2 / 3) + (2 / 6) * (1 / 2))


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    cm = ConfusionMatrix(3, IGN)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    m = cm.compute()
    assert math.isnan(m["iou"][2])
    assert m["miou"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_predicted_but_absent_class_counts_as_zero_iou() -> None:
    cm = ConfusionMatrix(3, IGN)
    cm.update(torch.tensor([2, 1]), torch.tensor([0, 1]))
    m = cm.compute()
    assert m["iou"] == pytest.approx([0.0, 1.0, 0.0])
    assert m["miou"] == pytest.approx(1 / 3)


def test_accumulates_over_batches_like_one_big_batch() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randint(0, 4, (6, 8, 8), generator=g), torch.randint(0, 5, (6, 8, 8), generator=g)
    target[target == 4] = IGN
    whole, parts = ConfusionMatrix(4, IGN), ConfusionMatrix(4, IGN)
    whole.update(pred, target)
    for i in range(6):
        parts.update(pred[i], target[i])
    assert torch.equal(whole.mat, parts.mat)
    assert whole.mat.sum() == (target != IGN).sum()


def _old_update(mat: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, n: int) -> None:
    """The pre-issue-14 computation: boolean-mask the N×H×W tensors, then bincount."""
    keep = target != IGN
    t, p = target[keep].to(torch.int64), pred[keep].to(torch.int64)
    mat += torch.bincount(t * n + p, minlength=n * n).reshape(n, n)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8])
def test_update_equals_the_masked_computation_on_random_batches(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    n = 11
    cm, ref = ConfusionMatrix(n, IGN), torch.zeros(n, n, dtype=torch.int64)
    for shape in [(4, 37, 53), (2, 1, 9), (61, 7)]:
        pred = torch.randint(0, n, shape, generator=g)
        target = torch.randint(0, n, shape, generator=g).to(dtype)
        target[torch.rand(shape, generator=g) < 0.2] = IGN
        cm.update(pred, target)
        _old_update(ref, pred, target, n)
    assert torch.equal(cm.mat, ref) and cm.mat.sum() > 0


def test_update_does_not_mask_select_the_batch() -> None:
    """Boolean-mask indexing of a 3-D batch (twice per batch) was the slow step; flat or none at all."""
    from torch.overrides import TorchFunctionMode

    seen: list[int] = []

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func is torch.Tensor.__getitem__ and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool:
                seen.append(args[0].dim())
            return func(*args, **(kwargs or {}))

    target = torch.randint(0, 3, (2, 8, 8))
    target[0, 0] = IGN
    cm = ConfusionMatrix(3, IGN)
    with Watch():
        cm.update(torch.randint(0, 3, (2, 8, 8)), target)
    assert not [d for d in seen if d > 1], f"masked a {seen}-D tensor"
    assert cm.mat.sum() == 2 * 64 - 8


@pytest.mark.parametrize(
    ("pred", "target", "what", "bad"),
    [
        ([0, 3], [0, 0], "prediction", 3),  # t·n + p = 3: would have landed in cell (1, 0)
        ([0, 0], [0, 3], "target", 3),  # t·n + p = 9 = n²: would have been dropped as ignored
        ([0, 1], [0, 7], "target", 7),
        ([0, -1], [0, 1], "prediction", -1),
        ([0, 2], [-1, 1], "target", -1),  # would have landed in cell (0, 1)
    ],
)
def test_out_of_range_class_id_is_a_one_line_error(pred: list[int], target: list[int], what: str, bad: int) -> None:
    cm = ConfusionMatrix(3, IGN)
    with pytest.raises(DataError, match=rf"^{what} holds class id {bad}, outside 0\.\.2 \(ignore_index {IGN}\)") as err:
        cm.update(torch.tensor(pred), torch.tensor(target))
    assert "\n" not in str(err.value)
    assert cm.mat.sum() == 0  # nothing was counted


def test_ignored_pixels_may_hold_any_prediction_id_in_range() -> None:
    cm = ConfusionMatrix(3, IGN)
    cm.update(torch.tensor([2, 1, 0]), torch.tensor([IGN, IGN, 0]))
    assert cm.mat.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_every_pixel_ignored_makes_every_summary_nan() -> None:
    cm = ConfusionMatrix(3, IGN)
    cm.update(torch.tensor([0, 1, 2]), torch.full((3,), IGN))
    m = cm.compute()
    assert all(math.isnan(m[k]) for k in ("pixel_acc", "mean_acc", "miou", "fwiou")), m
    assert all(math.isnan(v) for v in m["iou"])


def test_table_lists_every_class() -> None:
    cm = ConfusionMatrix(2, IGN)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    table = format_table(cm.compute(), ["road", "sky"])
    assert "road" in table and "sky" in table and "mIoU" in table and "n/a" not in table.split("road")[1].split("\n")[0]


def test_confusion_shows_every_class_name_in_full_with_numbered_columns() -> None:
    names = ["road", "traffic light", "traffic sign", "chest of drawers"]  # the last three share or exceed 6 letters
    mat = torch.tensor([[8, 2, 0, 0], [0, 5, 5, 0], [0, 0, 3, 1], [0, 0, 0, 0]])
    lines = format_confusion(mat, names).splitlines()
    assert lines[0].split()[-4:] == ["0", "1", "2", "3"]  # column k: predicted as class number k
    assert len({len(line) for line in lines}) == 1  # aligned
    for k, (name, line) in enumerate(zip(names, lines[1:])):
        assert line.startswith(f"{k} {name} ")  # the full name, with the number heading its column
    assert lines[2].split()[-4:] == ["0.0", "50.0", "50.0", "0.0"]  # rows = truth, in percent
    assert lines[4].split()[-4:] == ["0.0"] * 4  # a class absent from the truth: zeros, not NaN
    wide = format_confusion(torch.eye(150, dtype=torch.int64), [f"class name {k}" for k in range(150)]).splitlines()
    assert wide[1].startswith("  0 class name 0 ") and wide[150].startswith("149 class name 149 ")
    assert len(wide[0]) < 7 * 150 + 30  # 7 characters a column, however long the names
