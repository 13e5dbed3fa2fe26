"""REPAIR gives the merged net the interpolated unit statistics, in the original architecture."""

from __future__ import annotations

import pytest
import torch

import gcnn
from gcnn.analysis.merge import interpolate
from gcnn.analysis.repair import channel_statistics, repair, repair_points
from tests.analysis.conftest import batches_of, randomise_batchnorms


def _relative_gap(stats: dict, target: dict) -> float:
    gaps = [
        float((stats[n][i] - target[n][i]).norm() / target[n][i].norm())
        for n in target
        for i in (0, 1)
    ]
    return max(gaps)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_repair_restores_interpolated_statistics(batch_norm, cifar_images) -> None:
    torch.manual_seed(0)
    a = randomise_batchnorms(gcnn.vgg11(width=0.25, batch_norm=batch_norm), 0).double().eval()
    b = randomise_batchnorms(gcnn.vgg11(width=0.25, batch_norm=batch_norm), 1).double().eval()
    data = batches_of(cifar_images, size=20)  # one batch: train-mode = eval-mode statistics
    names = repair_points(a)
    assert len(names) == 8  # eight BatchNorms, or eight convs without BatchNorm
    sa, sb = channel_statistics(a, names, data), channel_statistics(b, names, data)
    target = {
        n: (torch.lerp(sa[n][0], sb[n][0], 0.5), torch.lerp(sa[n][1], sb[n][1], 0.5)) for n in names
    }
    repaired = repair(a, b, 0.5, data)
    assert repaired.state_dict().keys() == a.state_dict().keys()
    assert type(repaired) is type(a)
    after = channel_statistics(repaired, names, data)
    plain = channel_statistics(interpolate(a, b, 0.5), names, data)
    # Not exact: BatchNorm's running variance is the unbiased one, which matters in the last
    # blocks (2×2 maps × 20 images = 80 samples per channel); measured ≤ 2.6 %.
    assert _relative_gap(after, target) < 0.05
    assert _relative_gap(plain, target) > 0.3  # the negative control: no REPAIR (measured ≥ 0.7)


def _bn_act_net(seed: int) -> torch.nn.Module:
    """A small net whose BatchNorms apply their own ReLU (timm's ``BatchNormAct2d``)."""
    from timm.layers import BatchNormAct2d

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), BatchNormAct2d(8),
        torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), BatchNormAct2d(8),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10),
    )  # fmt: skip
    return randomise_batchnorms(net, seed).double().eval()


def test_repair_measures_a_batchnorm_act_before_its_activation(cifar_images) -> None:
    """timm's ``BatchNormAct2d`` returns ReLU(BN(x)): REPAIR must target the BN output (its
    ``drop`` submodule), not the rectified one, or the fold into the BN affine is wrong."""
    a, b = _bn_act_net(0), _bn_act_net(1)
    data = batches_of(cifar_images, size=20)
    names = repair_points(a)
    assert names == ["1.drop", "3.drop"]
    sa, sb = channel_statistics(a, names, data), channel_statistics(b, names, data)
    target = {
        n: (torch.lerp(sa[n][0], sb[n][0], 0.5), torch.lerp(sa[n][1], sb[n][1], 0.5)) for n in names
    }
    repaired = repair(a, b, 0.5, data)
    assert type(repaired.get_submodule("1.drop")) is torch.nn.Identity  # folded, not wrapped
    assert _relative_gap(channel_statistics(repaired, names, data), target) < 1e-2
    # the negative control: the rectified outputs do not have the pre-activation targets
    rectified = channel_statistics(repaired, ["1", "3"], data)
    assert _relative_gap({n + ".drop": rectified[n] for n in ("1", "3")}, target) > 0.1
