"""The adaptation's bone prior is the one of the category the articulated predictor was trained on: avian bones times
the synthetic builds' factors, checked against samples of the generator itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mesh_recon.bird_model import load_bird_model
from mesh_recon.bird_motion import LEG_BONES, build_factor_moments, sample_body_type
from mesh_recon.skinned_template import SkinnedTemplate


@pytest.fixture(scope="module")
def bird():
    return load_bird_model()


@pytest.fixture(scope="module")
def sampled_factors(bird):
    rng = np.random.default_rng(0)
    return np.stack([sample_body_type(bird, rng, 1.0)[0] for _ in range(20000)])


def test_build_moments_match_the_sampled_builds(sampled_factors):
    mean, cov = build_factor_moments(1.0)
    np.testing.assert_allclose(mean, sampled_factors.mean(0), atol=0.01)
    np.testing.assert_allclose(cov, np.cov(sampled_factors.T), atol=0.01)
    assert cov[LEG_BONES[0], LEG_BONES[0]] > 0.2  # a flamingo's legs are inside: std ~0.48 on a mean of 1.375
    mean0, cov0 = build_factor_moments(0.0)
    assert np.all(mean0 == 1) and np.all(cov0 == 0)


def test_widened_prior_is_the_distribution_of_avian_bones_times_builds(bird, sampled_factors):
    template = SkinnedTemplate.from_bird_model(bird, 16)
    avian_mean, avian_cov = template.prior_bone_mean.double(), torch.linalg.inv(template.prior_bone_precision.double())
    template.widen_bone_prior(*map(torch.from_numpy, build_factor_moments(1.0)))
    torch.manual_seed(0)
    avian = torch.distributions.MultivariateNormal(avian_mean, avian_cov).sample((len(sampled_factors),))
    bones = (avian * torch.from_numpy(sampled_factors)).numpy()
    np.testing.assert_allclose(template.prior_bone_mean.numpy(), bones.mean(0), atol=0.01)
    np.testing.assert_allclose(torch.linalg.inv(template.prior_bone_precision.double()).numpy(), np.cov(bones.T),
                               atol=0.015)


def test_no_builds_leave_the_avian_prior(bird):
    template = SkinnedTemplate.from_bird_model(bird, 16)
    before = template.prior_bone_mean.clone(), template.prior_bone_precision.clone()
    template.widen_bone_prior(*map(torch.from_numpy, build_factor_moments(0.0)))
    torch.testing.assert_close(template.prior_bone_mean, before[0])
    torch.testing.assert_close(template.prior_bone_precision, before[1], rtol=1e-4, atol=1e-2)
