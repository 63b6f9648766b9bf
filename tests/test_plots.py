"""minipost.plots and the report card over a set of runs, on synthetic metrics and eval files."""
import json
import struct
import zlib

import pytest

from minipost.plots import curves, write_curves
from minipost.report import intent_drops, main, render_runs, write_run_report


def png_size(path):
    """(width, height) of a valid PNG: signature, then an IHDR chunk whose CRC checks out."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])
    assert data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def make_run(root, name, ev, metrics=(), stage=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "eval.json").write_text(json.dumps(ev))
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if stage:
        (d / "config.json").write_text(json.dumps({"stage": stage}))
    return d


DPO_METRICS = [{"step": i, "loss": 0.7 - 0.01 * i, "lr": 1e-5 * i, "rewards/margins": 0.1 * i, "elapsed_s": i}
               for i in range(1, 11)]


def test_curves_pick_loss_lr_then_the_stage_metrics():
    records = DPO_METRICS + [{"step": 11, "val_loss": 2.0}, {"step": 12, "val_loss": 1.5}, '{"cut off']
    got = curves([r for r in records if isinstance(r, dict)])
    assert list(got) == ["loss", "lr", "rewards/margins", "val_loss"]  # no elapsed_s, no step
    assert got["val_loss"] == ([11.0, 12.0], [2.0, 1.5])
    assert got["rewards/margins"][1] == [0.1 * i for i in range(1, 11)]


def test_write_curves_makes_a_png(tmp_path):
    run = make_run(tmp_path, "dpo", {}, DPO_METRICS)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 11, "loss"')  # an interrupted last line is skipped
    path = write_curves(run)
    assert path == run / "curves.png"
    width, height = png_size(path)
    assert width > 300 and height > 100
    assert write_curves(make_run(tmp_path, "empty", {}, [{"step": 1, "loss": 1.0}])) is None


EV_SFT = {"fact_accuracy": 0.80, "fact_accuracy_before": 0.10, "format_rate": 0.9, "wall_time_s": 12.0,
          "fact_accuracy_by_intent": {"date": 0.89, "price": 0.70, "status": 0.60, "total": 0.5},
          "fact_accuracy_by_intent_before": {"date": 1.0, "price": 0.80, "status": 0.8, "total": 0.2}}


def test_flag_fires_exactly_above_ten_points():
    # date: -11 points (flag), price: 0.8 -> 0.7, exactly -10 in float noise (no flag),
    # status: -20 (flag), total: up (no flag)
    assert intent_drops(EV_SFT) == [("fact_accuracy_by_intent", "date", 1.0, 0.89, -11.0),
                                    ("fact_accuracy_by_intent", "status", 0.8, 0.6, -20.0)]
    assert intent_drops({"x_by_intent": {"a": 0.5}}) == []  # nothing to compare with
    assert intent_drops({"x_by_intent": {"a": 0.5}, "x_by_intent_before": {"a": 0.60001}}) == [
        ("x_by_intent", "a", 0.60001, 0.5, -10.001)]


def test_report_card_over_runs(tmp_path):
    sft = make_run(tmp_path / "out", "sft", EV_SFT, DPO_METRICS, stage="sft")
    dpo = make_run(tmp_path / "out", "dpo", {"pref_accuracy": 0.9, "fact_accuracy": 0.8,
                                             "fact_accuracy_by_intent": {"date": 0.9}}, DPO_METRICS, stage="dpo")
    main([str(sft), str(dpo), "--out", str(tmp_path / "card")])
    text = (tmp_path / "card" / "report.md").read_text()
    assert "**Flagged: 2 intent(s) down by more than 10 points.**" in text
    assert "- sft: fact_accuracy_by_intent `date` 1 -> 0.89 (-11.0 points)" in text
    assert "| fact_accuracy | 0.1 | 0.8 | +70.0 |" in text
    assert "| price | 0.8 | 0.7 | -10.0 |  |" in text  # exactly 10 points: not flagged
    assert "| status | 0.8 | 0.6 | -20.0 | **down > 10 points** |" in text
    assert "| pref_accuracy | | 0.9 | |" in text and "## dpo (dpo)" in text
    for name in ("sft", "dpo"):
        assert f"![{name} training curves]({name}_curves.png)" in text
        png_size(tmp_path / "card" / f"{name}_curves.png")


def test_no_flag_and_missing_eval(tmp_path):
    run = make_run(tmp_path, "rl", {"task_accuracy_before": 0.3, "task_accuracy": 0.5})
    text = render_runs([run], tmp_path, plots=False)
    assert "No intent moved down by more than 10 points." in text and "| task_accuracy | 0.3 | 0.5 | +20.0 |" in text
    with pytest.raises(SystemExit, match="no eval.json in"):
        write_run_report([tmp_path / "nope"], tmp_path / "card")
