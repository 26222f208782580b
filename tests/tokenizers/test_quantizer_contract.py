"""One contract over every quantizer in pipeline/tokenizers/quantizers (as vector-quantize-pytorch
tests each of its quantizers): `out = q(x)` gives indices of the documented shape inside the
codebook, `q.lookup(out.indices)` gives back exactly `out.quantized`, the same input gives the
same codes, and a bf16 autocast around the call does not change them (the nearest-code search
runs in float32). A quantizer added to the package without a case here fails the first test."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Callable

import pytest
import torch

import pipeline.tokenizers.quantizers as package
from pipeline.tokenizers.quantizers import Quantizer
from pipeline.tokenizers.quantizers.gaussian import GaussianQuantizer
from pipeline.tokenizers.quantizers.l2norm import L2NormQuantizer
from pipeline.tokenizers.quantizers.residual import MultiScaleResidualQuantizer
from pipeline.tokenizers.quantizers.spherical import SphericalQuantizer

B, H, W = 2, 8, 6


def _seeded(make: Callable[[], Quantizer]) -> Callable[[], Quantizer]:
    def build() -> Quantizer:
        torch.manual_seed(0)
        q = make().eval()
        for p in q.parameters():  # non-trivial codebooks: the default inits can be near-constant
            torch.nn.init.normal_(p)
        return q
    return build


# name -> (build the quantizer, channels of its input, indices per position: None = one, G = grouped,
#          "scales" = a list of per-scale grids)
CASES = {
    "l2norm": (_seeded(lambda: L2NormQuantizer(64, 8, usage_buffer=False)), 8, None),
    "l2norm-raw": (_seeded(lambda: L2NormQuantizer(64, 8, l2_norm=False, usage_buffer=False)), 8, None),
    "spherical-vq": (_seeded(lambda: SphericalQuantizer(64, 8)), 8, None),
    "spherical-gvq": (_seeded(lambda: SphericalQuantizer(64, 8, num_group=4)), 8, 4),
    "gaussian": (_seeded(lambda: GaussianQuantizer(n_samples=256, dim=4, seed=1)), 2 * 8, 2),
    "residual": (_seeded(lambda: MultiScaleResidualQuantizer(64, 8, (1, 2, 4, 6))), 8, "scales"),
}
CLASS_OF_CASE = {"l2norm": L2NormQuantizer, "spherical-vq": SphericalQuantizer, "gaussian": GaussianQuantizer,
                 "residual": MultiScaleResidualQuantizer}


def quantizer_classes() -> set[type]:
    found = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found |= {obj for _, obj in inspect.getmembers(module, inspect.isclass)
                  if issubclass(obj, Quantizer) and obj is not Quantizer and obj.__module__ == module.__name__}
    return found


def test_every_quantizer_of_the_package_has_a_case():
    assert quantizer_classes() == set(CLASS_OF_CASE.values())


def latent(channels: int) -> torch.Tensor:
    return torch.randn(B, channels, H, W, generator=torch.Generator().manual_seed(1))


def grids(indices) -> list[torch.Tensor]:
    return list(indices) if isinstance(indices, (list, tuple)) else [indices]


@pytest.mark.parametrize("name", sorted(CASES))
def test_lookup_of_the_indices_is_the_quantized_latent(name):
    build, channels, per_position = CASES[name]
    q = build()
    x = latent(channels)
    out = q(x)
    code_dim = channels // 2 if isinstance(q, GaussianQuantizer) else channels  # moments = [mu ; logvar]
    assert out.quantized.shape == (B, code_dim, H, W)
    for grid in grids(out.indices):
        assert not grid.dtype.is_floating_point
        assert int(grid.min()) >= 0 and int(grid.max()) < q.codebook_size
    if per_position == "scales":
        assert isinstance(out.indices, list) and grids(out.indices)[-1].shape == (B, H, W)
    elif per_position is None:
        assert out.indices.shape == (B, H, W)
    else:
        assert out.indices.shape == (B, H, W, per_position)
    torch.testing.assert_close(q.lookup(out.indices), out.quantized, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_codes_are_deterministic_and_autocast_leaves_them_alone(name):
    build, channels, _ = CASES[name]
    q = build()
    x = latent(channels)
    first = grids(q(x).indices)
    assert all(torch.equal(a, b) for a, b in zip(first, grids(q(x.clone()).indices)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_bf16 = grids(q(x).indices)
    assert all(torch.equal(a, b) for a, b in zip(first, under_bf16))
    assert len({int(v) for g in first for v in g.flatten()}) > 1  # a real search, not one code for all


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if CASES[n][2] != "scales"])
def test_lookup_refuses_codes_outside_the_codebook(name):
    build, channels, _ = CASES[name]
    q = build()
    bad = q(latent(channels)).indices.clone()
    bad.view(-1)[0] = q.codebook_size
    with pytest.raises((ValueError, IndexError)):
        q.lookup(bad)
