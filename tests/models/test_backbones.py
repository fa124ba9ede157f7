"""The backbone registry: feature widths at any image size, local ImageNet weights only."""

import pytest
import torch
from torch import nn

from medaug.errors import MedaugError
from medaug.models.backbones import build_backbone, feature_dim, list_archs

# Widths from the architectures' papers (ResNet, DenseNet; DeiT/ViT Ti, S, B).
FEATURE_DIMS = {"resnet18": 512, "resnet50": 2048, "densenet121": 1024,
                "vit_tiny": 192, "vit_small": 384, "vit_base": 768}


def test_every_registered_backbone_has_its_known_width():
    assert {a: feature_dim(a) for a in list_archs()} == FEATURE_DIMS


# One ViT is enough to run here; the wider ones differ only in width and cost time.
@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "densenet121", "vit_tiny"])
@pytest.mark.parametrize("size", [32, 64])
def test_backbones_give_features_of_the_registered_width_at_any_size(arch, size):
    model, dim = build_backbone(arch, image_size=size)
    assert dim == FEATURE_DIMS[arch] == feature_dim(arch)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, dim)


def test_a_vit_needs_an_image_size_that_its_patches_tile():
    with pytest.raises(MedaugError, match="multiple of 16"):
        build_backbone("vit_tiny", image_size=40)


def test_unknown_arch_and_init_are_user_errors():
    with pytest.raises(MedaugError, match="valid: resnet18, resnet50, densenet121, vit_tiny"):
        build_backbone("vit_b_16")
    with pytest.raises(MedaugError, match="valid: random, imagenet"):
        build_backbone("resnet18", init="simclr")


def test_imagenet_init_needs_an_existing_local_file(tmp_path):
    with pytest.raises(MedaugError, match="needs a local weights file"):
        build_backbone("resnet18", init="imagenet")
    missing = tmp_path / "nope.pth"
    with pytest.raises(MedaugError, match=f"{missing} does not exist"):
        build_backbone("resnet18", init="imagenet", weights=str(missing))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(MedaugError, match="cannot read weights file"):
        build_backbone("resnet18", init="imagenet", weights=str(junk))


def _assert_same_weights(backbone, state):
    own = backbone.state_dict()
    for key, value in state.items():
        if key.startswith(("fc.", "classifier.")):
            continue
        assert torch.equal(own[key], value), key


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model_ddp"])
def test_imagenet_state_dict_round_trip(tmp_path, wrap):
    import torchvision

    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)  # stands in for ImageNet weights
    state = source.state_dict()
    if wrap == "state_dict":
        payload = {"state_dict": state, "epoch": 3}
    elif wrap == "model_ddp":
        payload = {"model": {f"module.{k}": v for k, v in state.items()}}
    else:
        payload = state
    path = tmp_path / "resnet18.pth"
    torch.save(payload, path)
    backbone, dim = build_backbone("resnet18", init="imagenet", weights=str(path))
    assert dim == 512 and isinstance(backbone.fc, nn.Identity)
    _assert_same_weights(backbone, state)
    source.fc = nn.Identity()
    source.eval()
    backbone.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(backbone(x), source(x))


def test_densenet_old_style_keys_are_renamed(tmp_path):
    import torchvision

    torch.manual_seed(2)
    state = torchvision.models.densenet121(weights=None).state_dict()
    old = {
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in state.items()
    }
    assert old.keys() != state.keys()
    path = tmp_path / "densenet.pth"
    torch.save(old, path)
    backbone, _ = build_backbone("densenet121", init="imagenet", weights=str(path))
    _assert_same_weights(backbone, state)


def test_weights_of_another_arch_do_not_fit(tmp_path):
    import torchvision

    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(MedaugError, match="does not fit ResNet: .*unexpected.*wrong shape"):
        build_backbone("resnet18", init="imagenet", weights=str(path))


