"""Model registry: every network builds in 2D and 3D, and bad names/params are named."""

from __future__ import annotations

import pytest
import torch

from medres.errors import ConfigError
from medres.models.registry import build_model, model_names, model_parameters, size_divisor

SMALL = {
    "res_unet": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "segresnet": {"init_filters": 4, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]},
    "resenc_unet": {"filters": [4, 8, 16]},
}


def test_registry_names() -> None:
    assert model_names() == ["res_unet", "resenc_unet", "retinanet", "segresnet"]


@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
@pytest.mark.parametrize("name", sorted(SMALL), ids=sorted(SMALL))
def test_models_keep_the_input_size(name: str, dims: int) -> None:
    net = build_model(name, dims=dims, in_channels=2, out_channels=3, params=SMALL[name])
    divisor = size_divisor(name, SMALL[name])
    assert divisor == 4
    # odd, anisotropic multiples of the divisor so axis mix-ups fail
    shape = (2, 2, 12, 20, 8)[: 2 + dims]
    net.eval()
    with torch.inference_mode():
        out = net(torch.randn(shape))
    assert out.shape == (2, 3, *shape[2:])
    # residual blocks are present (these are the residual networks of the brief)
    assert any("res" in type(m).__name__.lower() for m in net.modules())


def test_unknown_model_and_parameter() -> None:
    with pytest.raises(
        ConfigError, match=r"model 'unet3' is not registered; choose one of res_unet"
    ):
        build_model("unet3", dims=3, in_channels=1, out_channels=2, params={})
    with pytest.raises(
        ConfigError, match=r"unknown parameter\(s\) \['chanels'\]; accepted: channels"
    ):
        build_model("res_unet", dims=3, in_channels=1, out_channels=2, params={"chanels": [8]})
    with pytest.raises(ConfigError, match=r"strides needs len\(channels\) - 1 = 2 values, got 1"):
        build_model(
            "res_unet",
            dims=2,
            in_channels=1,
            out_channels=2,
            params={"channels": [4, 8, 16], "strides": [2]},
        )
    assert "num_res_units" in model_parameters("res_unet")
