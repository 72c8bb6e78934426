"""Plots and result files a user reads: reward curves show rewards only on the reward axis, integer steps
get integer ticks, per-layer probe accuracy shows every point, cliff_stats.json is valid JSON."""

import json
import math

import matplotlib
import matplotlib.figure
import pytest

matplotlib.use("Agg")


@pytest.fixture
def saved_figures(monkeypatch):
    figs = []
    orig = matplotlib.figure.Figure.savefig

    def keep(self, *args, **kwargs):
        figs.append(self)
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    return figs


def test_reward_curve_plots_reward_terms_only_with_integer_steps(tmp_path, saved_figures):
    from rlreason.trainer.metrics import plot_rewards
    history = [{"step": s, "reward/total": 0.1 * s, "reward/search_cost": 0.05 * s, "reward/search_cost/n_min": -1.0,
                "reward/search_cost/em": 0.5, "reward/search_cost/errors": 0.0} for s in (1, 2, 3)]
    plot_rewards(history, tmp_path / "r.png")
    ax = saved_figures[-1].axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "reward/total" in labels and "reward/search_cost" in labels
    assert not [lab for lab in labels if lab.startswith("reward/search_cost/")], labels
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_per_layer_accuracy_plot_shows_points_below_0_4(tmp_path, saved_figures):
    from rlreason.probes.commands import _plot_per_layer
    table = [{"layer": i, "val_acc": a, "test_acc": a, "train_acc": a} for i, a in enumerate([0.3, 0.55, 0.9])]
    _plot_per_layer(table, 2, tmp_path / "p.png")
    lo, hi = saved_figures[-1].axes[0].get_ylim()
    assert lo < 0.3 and hi >= 0.9
    assert all(float(t).is_integer() for t in saved_figures[-1].axes[0].get_xticks())


def test_cliff_stats_json_has_no_bare_nan(tmp_path):
    from rlreason.probes.cliff import cliff_stats
    from rlreason.probes.commands import _write_json
    rows = [{"harmful": False, "refused": False, "cliff": 0.1, "think_max": 0.5, "final_score": 0.4}]
    stats = cliff_stats(rows)  # the two harmful groups are empty: their means are undefined
    path = tmp_path / "cliff_stats.json"
    _write_json(stats, path)

    def reject(name):
        raise ValueError(f"bare {name} in JSON")
    loaded = json.loads(path.read_text(), parse_constant=reject)
    assert loaded["harmful, refused"]["cliff_mean"] is None
    assert math.isclose(loaded["harmless"]["cliff_mean"], 0.1)
