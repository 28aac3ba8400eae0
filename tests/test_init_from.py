"""train.init_from: a new run that starts from a trained checkpoint's weights (fine-tuning stages)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train
from semseg.build import build_model
from semseg.config import config_from_dict, load_config
from tests.conftest import REPO, one_line_error
from tests.fixtures.checkpoints import write_checkpoint
from tests.test_pipeline import records, run_train

SMALL = ["train.epochs=1", "data.params.num_images={train: 8, val: 2, test: 1}"]
# A run that barely moves its weights (plain SGD at lr 1e-9: under 1e-7 per weight over its two steps;
# lr 0 itself is refused by the config schema, issue 16)
FROZEN = ["optim.name=sgd", "optim.momentum=0.0", "optim.lr=1.0e-9", "optim.weight_decay=0.0"]


def params(path: Path, key: str = "model") -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=False)[key]
    return {k.removeprefix("module."): v for k, v in state.items() if k != "n_averaged"}


@pytest.mark.parametrize("ema", [False, True])
def test_new_run_starts_from_the_validated_weights_with_fresh_progress(tmp_path: Path, ema: bool) -> None:
    first = run_train(tmp_path / "a", *SMALL, *(["train.ema=0.9"] if ema else []))
    second = run_train(tmp_path / "b", *SMALL, *FROZEN, f"train.init_from={first / 'last.pt'}")
    scratch = run_train(tmp_path / "c", *SMALL, *FROZEN, "train.seed=1")

    start = params(first / "last.pt", "ema" if ema else "model")  # the EMA weights are what was validated
    trained, fresh = torch.load(second / "last.pt", weights_only=False)["model"], params(scratch / "last.pt")
    model = build_model(config_from_dict({"model": {"name": "enet"}, "data": {"name": "synthetic"}}).model, 6)
    names = [n for n, _ in model.named_parameters()]  # BN running statistics move whatever the lr
    for name in names:
        torch.testing.assert_close(trained[name], start[name], rtol=0, atol=1e-6, msg=name)
    assert any((fresh[n] - start[n]).abs().max() > 1e-3 for n in names)  # not a coincidence of seeds
    assert [e["epoch"] for e in records(second, "epoch")] == [1]  # its own epoch count, fresh best
    ckpt = torch.load(second / "last.pt", weights_only=False)
    assert ckpt["state"]["iteration"] == 2 and ckpt["config"]["train"]["init_from"] == str(first / "last.pt")


def test_resume_of_a_fine_tuning_run_does_not_reread_init_from(tmp_path: Path) -> None:
    first = run_train(tmp_path / "a", *SMALL)
    second = run_train(tmp_path / "b", *SMALL, f"train.init_from={first / 'last.pt'}")
    resumed_from = torch.load(second / "last.pt", weights_only=False)["model"]
    (first / "last.pt").unlink()  # the first stage is gone: the resume needs only its own checkpoint
    assert train.main(["--resume", str(second / "last.pt"), "--set", "train.epochs=2"]) == 0
    ckpt = torch.load(second / "last.pt", weights_only=False)
    assert ckpt["state"]["epoch"] == 2
    assert any(not torch.equal(ckpt["model"][k], v) for k, v in resumed_from.items() if v.is_floating_point())


def test_a_checkpoint_that_cannot_start_the_run_is_one_line_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    erfnet = write_checkpoint(tmp_path / "erfnet.pt", {"name": "synthetic"}, model="erfnet")
    camvid = write_checkpoint(tmp_path / "camvid.pt", {"name": "camvid"})
    cases = {
        tmp_path / "missing.pt": f"{tmp_path / 'missing.pt'}: checkpoint not found",
        erfnet: f"{erfnet}: holds model 'erfnet', but model.name is 'enet'",
        camvid: f"{camvid}: trained on 11 classes (sky, building, pole, road, …) but dataset 'synthetic' has 6",
    }
    for path, message in cases.items():
        rc = train.main(["--config", str(REPO / "configs" / "synthetic_tiny.yml"), "--set", f"train.init_from={path}",
                         f"log.run_dir={tmp_path / 'runs'}", "log.visdom=false"])  # fmt: skip
        assert rc == 2
        assert one_line_error(capsys).startswith(f"error: train.init_from: {message}")
    assert not (tmp_path / "runs").exists()  # failed before a run folder was made


def test_fcdensenet_second_stage_recipe_starts_where_the_first_stage_writes() -> None:
    first = load_config(REPO / "configs" / "fcdensenet103_camvid.yml")
    second = load_config(REPO / "configs" / "fcdensenet103_camvid_finetune.yml")
    assert Path(second.train.init_from) == Path(first.log.run_dir) / "fcdensenet103_camvid" / "best.pt"
    assert second.model == first.model and second.optim.lr == first.optim.lr / 10  # paper: 1e-4 after 1e-3
    assert (second.augment.crop, second.data.batch_size) == (None, 1)  # full 360×480 frames, batch 1
