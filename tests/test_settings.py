"""Typed experiment settings: the paper's protocol as defaults, profile overrides checked by name
and type, one-line errors for a misspelt key, and ``--list --experiment`` showing them."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal

import pytest

import run_all
from bagrepro.harness import profiles
from bagrepro.core.errors import ConfigError
from bagrepro.harness.registry import check_profile, discover_experiments, experiment_settings
from bagrepro.core.settings import describe, provenance, resolve


@dataclasses.dataclass(frozen=True)
class Example:
    steps: int = 100
    rate: float = 0.5
    sizes: tuple[int, ...] = (8, 16)
    fill: Literal["dc", "zero"] = "dc"
    limit: int | None = None
    note: str = ""


def test_overrides_are_checked_by_name_and_type():
    settings = resolve(Example, {"steps": 3, "rate": 1, "sizes": [4], "fill": "zero", "limit": 7}, "here")
    assert settings == Example(steps=3, rate=1.0, sizes=(4,), fill="zero", limit=7)
    assert isinstance(settings.rate, float) and isinstance(settings.sizes, tuple)
    assert resolve(Example, {}, "here") == Example()
    with pytest.raises(ConfigError, match=r"^here has no setting 'step'; settings: fill, limit, note, rate, sizes, steps$"):
        resolve(Example, {"step": 3}, "here")
    for key, bad in [("steps", "3"), ("steps", 2.5), ("steps", True), ("sizes", 8), ("sizes", ["a"]),
                     ("fill", "blur"), ("note", 1), ("limit", "all")]:
        with pytest.raises(ConfigError, match=f"^here, setting '{key}' must be"):
            resolve(Example, {key: bad}, "here")


def test_every_profile_fits_the_experiments_it_sets():
    import bagrepro.demo  # noqa: F401  (registers the demo profile)

    assert {"smoke", "demo", "paper", "custom"} <= set(profiles.PROFILES)
    for profile in profiles.PROFILES.values():
        check_profile(profile)


def test_defaults_are_the_papers_protocol():
    registry = discover_experiments()
    paper = profiles.get_profile("paper")
    masking = experiment_settings(registry["masking"], paper)
    assert (masking.steps, masking.patch, masking.fill, masking.ig_steps) == (100, 8, "dc", 100)
    assert masking.white_box == ("saliency", "integrated_gradients", "eps_lrp", "deeplift")
    assert experiment_settings(registry["interactions"], paper).patch_sizes == (8, 16, 24, 32, 40, 48, 56, 64)
    assert experiment_settings(registry["scrambling"], paper).grids == (2, 4, 8)
    assert experiment_settings(registry["top_patches"], paper).k == 7
    thresholds = experiment_settings(registry["thresholding"], paper)
    assert (thresholds.low, thresholds.high) == (-100.0, 100.0)
    # the paper profile overrides the timing of its runtime measurement and Table 1's image count
    # (ours: the paper gives none; enough images to resolve its VGG-16 difference, see --plan)
    assert set(paper.settings) == {"runtime", "masking"} and set(paper.settings["masking"]) == {"num_images"}


def test_an_unknown_attribution_method_in_a_setting_names_the_valid_ones():
    masking = discover_experiments()["masking"]
    with pytest.raises(ConfigError, match="saliency"):
        resolve(masking.settings, {"white_box": ("saliency", "nope")}, "here")


@pytest.mark.parametrize("settings, message", [
    ({"masking": {"num_imgaes": 3}}, "profile 'smoke', experiment 'masking' has no setting 'num_imgaes'; settings: "),
    ({"masking": {"steps": "12"}}, "profile 'smoke', experiment 'masking', setting 'steps' must be int, got '12'"),
    ({"maskign": {"steps": 12}}, "profile 'smoke' sets unknown experiment 'maskign'; experiments: accuracy"),
])
def test_a_misspelt_setting_fails_in_one_line_before_any_work(tmp_path, capsys, monkeypatch, settings, message):
    broken = dataclasses.replace(profiles.PROFILES["smoke"], settings=profiles.frozen(settings))
    monkeypatch.setitem(profiles.PROFILES, "smoke", broken)
    code = run_all.main(["--profile", "smoke", "--experiment", "accuracy", "--quiet", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "results").exists()


def test_list_shows_an_experiments_settings_on_a_profile(capsys):
    assert run_all.main(["--list", "--experiment", "masking", "--profile", "smoke"]) == 0
    listing = capsys.readouterr().out
    assert "masking (Fig. 8, Table 1) on profile 'smoke':" in listing
    assert "steps" in listing and "12   (default: 100)" in listing and "default: paper, Table 1" in listing
    assert "fill" in listing and "'dc'" in listing
    rows = describe(experiment_settings(discover_experiments()["masking"], profiles.get_profile("smoke")))
    assert ("steps", "int", 100, 12, "paper, Table 1: 100 masked patches") in rows


@pytest.mark.parametrize("experiment", list(discover_experiments().values()), ids=lambda e: e.name)
def test_every_setting_says_whose_its_default_is(experiment):
    """The paper's (naming its section, figure or table), ours (with why), or mechanics."""
    for field, whose in provenance(experiment.settings).items():
        kind, _, why = whose.partition(": ") if not whose.startswith("paper, ") else ("paper", "", whose[7:])
        assert kind in ("paper", "ours", "mechanics") and why, f"{experiment.name}.{field}: {whose!r}"
        if kind == "paper":
            assert re.match(r"(Sec\.|Fig\.|Table|eq\.|Appendix) ?[A-Z]?\.?\d", why), f"{experiment.name}.{field}: {whose!r}"


def test_protocol_page_is_what_the_code_says():
    """docs/protocol.md is made by `run_all.py --protocol`: run it again after changing a setting."""
    page = Path(run_all.__file__).parent / "docs" / "protocol.md"
    assert page.read_text() == run_all.protocol_text(), "docs/protocol.md is stale: python run_all.py --protocol > docs/protocol.md"
