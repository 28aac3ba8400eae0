"""bfortuner/pytorch_tiramisu checkpoints (the widely used PyTorch port) → ``fcdensenet56/67/103``.

Layout read from that port's ``models/layers.py`` and ``models/tiramisu.py``: ``firstconv``;
``denseBlocksDown.<i>.layers.<j>`` = (``norm``, relu, ``conv``, drop); ``transDownBlocks.<i>``
= (``norm``, relu, ``conv``, drop, maxpool); ``bottleneck.bottleneck.layers.<j>``;
``transUpBlocks.<i>.convTrans``; ``denseBlocksUp.<i>.layers.<j>``; ``finalConv``. Its
``FCDenseNet57`` is our ``fcdensenet56`` (same layers). Saved by its ``save_weights`` as
``{'startEpoch', 'loss', 'error', 'state_dict'}``. It was trained in PyTorch, so its BN
epsilon is 1e-5 (ours follows the Lasagne original's 1e-4 unless told), it normalises with
its own CamVid mean/std, and it predicts 12 classes, the last being void, which is dropped.
Pooling (``MaxPool2d(2)``, floor) and the centre crop agree with ours.
"""

from __future__ import annotations

from semseg.official import OFFICIAL, Converter

MODELS = ("fcdensenet56", "fcdensenet67", "fcdensenet103")
_LAYER = ((r"norm", "0"), (r"conv", "2"))  # DenseLayer: norm, relu, conv, drop → our Sequential indices
RULES = (
    (r"firstconv\.(.+)", r"first_conv.\1"),
    *((rf"denseBlocksDown\.(\d+)\.layers\.(\d+)\.{n}\.(.+)", rf"down_blocks.\1.layers.\2.{i}.\3") for n, i in _LAYER),
    *((rf"transDownBlocks\.(\d+)\.{n}\.(.+)", rf"transitions_down.\1.0.{i}.\2") for n, i in _LAYER),
    *((rf"bottleneck\.bottleneck\.layers\.(\d+)\.{n}\.(.+)", rf"bottleneck.layers.\1.{i}.\2") for n, i in _LAYER),
    (r"transUpBlocks\.(\d+)\.convTrans\.(.+)", r"transitions_up.\1.up.\2"),
    *((rf"denseBlocksUp\.(\d+)\.layers\.(\d+)\.{n}\.(.+)", rf"up_blocks.\1.layers.\2.{i}.\3") for n, i in _LAYER),
    (r"finalConv\.(.+)", r"classifier.\1"),
)
CAMVID_MEAN = [0.41189489566336, 0.4251328133025, 0.4326707089857]  # the port's datasets/camvid.py
CAMVID_STD = [0.27413549931506, 0.28506257482912, 0.28284674400252]


@OFFICIAL.register("bfortuner_tiramisu", models=MODELS, files="bfortuner/pytorch_tiramisu weights-<epoch>-*.pth")
def bfortuner_tiramisu() -> Converter:
    """Rename; PyTorch's BN epsilon and the port's normalisation; the void output dropped."""
    return Converter(
        models=MODELS, rules=RULES, class_dims={"classifier.weight": 0, "classifier.bias": 0},
        model_params={"bn_eps": 1e-5}, augment={"mean": CAMVID_MEAN, "std": CAMVID_STD},
    )
