import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from birdmesh.config import Count, Fraction, Positive, config_from_dict, config_to_dict, format_config, load_config
from birdmesh.errors import UserError


@dataclass(frozen=True)
class Optim:
    lr: Positive = 1e-4
    steps: Count = 10
    momentum: Fraction = 0.9
    clip: Optional[Positive] = None
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class Job:
    name: str = "job"
    seed: int = 0
    resume: bool = True
    checkpoint: Optional[str] = None
    mode: Literal["fast", "exact"] = "fast"
    optim: Optim = field(default_factory=Optim)


def test_defaults_file_and_overrides_merge_in_order(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: birds\noptim:\n  lr: 3\n  steps: 5\n")
    cfg = load_config(Job, path, ["optim.steps=7", "checkpoint=w.pt", "optim.betas=[0.5, 0.6]"])
    assert cfg.name == "birds" and cfg.seed == 0
    assert cfg.optim.lr == 3.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.steps == 7 and cfg.checkpoint == "w.pt" and cfg.optim.betas == (0.5, 0.6)


def test_unknown_key_is_an_error_naming_key_and_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("optim:\n  lrr: 3\n")
    with pytest.raises(UserError, match=r"job.yaml: unknown key 'optim.lrr'"):
        load_config(Job, path)
    with pytest.raises(UserError, match=r"--set: unknown key 'sed'"):
        load_config(Job, None, ["sed=1"])


def test_exponent_floats_are_floats_in_files_and_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("optim:\n  lr: 3e-4\n")  # YAML 1.1 reads this as the string '3e-4'
    assert load_config(Job, path).optim.lr == 3e-4
    cfg = load_config(Job, None, ["optim.lr=1e-3", "optim.betas=[5E-1, 1e0]"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float) and cfg.optim.betas == (0.5, 1.0)
    with pytest.raises(UserError, match=r"key 'optim.lr' expects float, got 'fast'"):
        load_config(Job, None, ["optim.lr=fast"])
    with pytest.raises(UserError, match=r"key 'name' expects str, got 0.001"):
        load_config(Job, None, ["name=0.001"])


def test_wrong_types_are_errors_naming_the_key(tmp_path):
    with pytest.raises(UserError, match=r"key 'optim.steps' expects int, got 'many'"):
        load_config(Job, None, ["optim.steps=many"])
    with pytest.raises(UserError, match=r"key 'resume' expects true/false"):
        load_config(Job, None, ["resume=3"])
    with pytest.raises(UserError, match=r"key 'optim' is a section"):
        load_config(Job, None, ["optim=3"])
    with pytest.raises(UserError, match=r"expected key=value"):
        load_config(Job, None, ["seed"])
    with pytest.raises(UserError, match=r"nope.yaml: config file not found"):
        load_config(Job, tmp_path / "nope.yaml")


def test_round_trip_through_dict_and_yaml_text():
    cfg = load_config(Job, None, ["optim.lr=0.5"])
    assert config_from_dict(Job, config_to_dict(cfg)) == cfg
    assert "lr: 0.5" in format_config(cfg)


def test_literal_keys_accept_only_their_choices():
    assert load_config(Job, None, ["mode=exact"]).mode == "exact"
    with pytest.raises(UserError, match=r"--set: key 'mode' expects one of fast, exact, got 'quick'"):
        load_config(Job, None, ["mode=quick"])


def test_values_out_of_their_range_are_errors_naming_the_key_and_the_range(tmp_path):
    cfg = load_config(Job, None, ["optim.steps=1", "optim.momentum=1", "optim.momentum=0", "optim.clip=1e-9"])
    assert (cfg.optim.steps, cfg.optim.momentum, cfg.optim.clip) == (1, 0.0, 1e-9)
    path = tmp_path / "job.yaml"
    path.write_text("optim:\n  steps: 0\n")
    with pytest.raises(UserError, match=re.escape(f"{path}: key 'optim.steps' must be >= 1, got 0")):
        load_config(Job, path)
    with pytest.raises(UserError, match=r"--set: key 'optim.lr' must be > 0, got 0.0"):
        load_config(Job, None, ["optim.lr=0"])
    with pytest.raises(UserError, match=r"key 'optim.momentum' must be >= 0 and <= 1, got 1.5"):
        load_config(Job, None, ["optim.momentum=1.5"])
    with pytest.raises(UserError, match=r"key 'optim.clip' must be > 0, got -1.0"):  # not a type error
        load_config(Job, None, ["optim.clip=-1"])
    with pytest.raises(UserError, match=r"key 'optim.clip' expects float or null, got 'x'"):
        load_config(Job, None, ["optim.clip=x"])


@pytest.mark.parametrize("job, override", [
    ("adapt", "propagation.pixel_stride=0"), ("adapt", "propagation.topk=0"), ("adapt", "optim.lr=-1e-3"),
    ("adapt", "optim.base_momentum=2"), ("cmr", "train.batch_size=0"), ("uvc", "loss.concentration=-0.3"),
])
def test_shipped_configs_load_and_refuse_out_of_range_values(job, override):
    from adapt.config import AdaptConfig
    from correspondence.config import UVCConfig
    from mesh_recon.predictor_config import CMRConfig
    cls, name = {"adapt": (AdaptConfig, "adapt"), "cmr": (CMRConfig, "cmr_cpu"), "uvc": (UVCConfig, "uvc_cpu")}[job]
    path = Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    load_config(cls, path)
    with pytest.raises(UserError, match=rf"--set: key '{override.split('=')[0]}' must be"):
        load_config(cls, path, [override])


def test_adapt_yaml_holds_the_documented_defaults():
    from adapt.config import AdaptConfig  # adapt/config.py documents each key beside its default: keep them equal
    assert load_config(AdaptConfig, Path(__file__).resolve().parents[2] / "configs" / "adapt.yaml") == AdaptConfig()
