"""The comparison figure plots MTP / DS-MTP as the mean loss per head (labelled), not the sum over heads."""

from pathlib import Path

from foresight.compare import RunLog, _panels, _train_value, plot
from foresight.train.metrics import training_tokens_per_s


def _run(name, train):
    return RunLog(name=name, path=Path(name), meta={}, train=train, evals=[])


def test_mtp_and_dsmtp_curves_are_means_per_head():
    train = [{"kind": "train", "step": s, "loss": 9.0, "ntp_loss": 3.0, "mtp_loss": 7.5, "mtp_head1": 3.5,
              "mtp_head2": 4.0, "dsmtp_loss": 3.2, "dsmtp_depth1": 3.2, "tokens_per_s": rate}
             for s, rate in ((1, 100.0), (2, 300.0), (3, 200.0))]
    run = _run("mtp3", train)
    assert _train_value(train[0], "mtp") == 3.75 and _train_value(train[0], "ntp") == 3.0
    assert _train_value(train[0], "dsmtp") == 3.2
    titles = [t for t, _ in _panels([run])]
    assert titles == ["ntp loss", "mtp loss, mean per head", "dsmtp loss, mean per head"]
    assert training_tokens_per_s(train + [{"kind": "eval", "tokens_per_s": 1e9}]) == 200.0  # the median, train only


def test_plot_writes_a_figure(tmp_path):
    train = [{"kind": "train", "step": s, "loss": 5.0, "ntp_loss": 3.0, "mtp_loss": 2.0, "mtp_head1": 2.0}
             for s in range(1, 6)]
    assert plot([_run("a", train)], tmp_path / "f.png").is_file()
