"""`clipfit table builtin-models`: the built-in models side by side, on the mini-world table's own run folders."""

from __future__ import annotations

import dataclasses

import pytest

from clipfit.errors import ClipFitError
from clipfit_world.compare import BASE_TO_NEW, CompareConfig, compare_models, to_markdown
from clipfit_world.model import weights_file
from clipfit_world.tables import MiniWorldTableConfig, mini_world_table


@pytest.mark.slow  # 7 short runs on one task: about 40 s
def test_the_comparison_measures_each_model_and_shares_the_mini_world_tables_runs(tmp_path):
    compare = CompareConfig(models=["mini-clip"], tasks=["mini_colors"], seeds=[1], shots=2, epochs=1,
                            data_root=str(tmp_path / "data"), out=str(tmp_path / "runs"))
    unfinished = compare_models(dataclasses.replace(compare, run_missing=False), progress=False)["mini-clip"]
    assert unfinished["zeroshot_all"] is None and unfinished["drift"]["clipfit"] is None
    assert "…" in to_markdown(compare, {"mini-clip": unfinished})

    result = compare_models(compare, progress=False)["mini-clip"]
    assert 0 < result["zeroshot_all"] <= 100 and 0 < result["linear_probe_all"] <= 100
    assert set(result["base2new"]) == set(BASE_TO_NEW) and None not in result["base2new"].values()
    # One epoch moves the text biases: the class features drift, by a little.
    assert 0 < result["drift"]["clipfit"] < 0.5 and 0 < result["drift"]["clipfit-no-ln"] < 0.5
    # The mini-world table on the same folders finds zero-shot's and CLIPFit's cells finished and agrees.
    table = MiniWorldTableConfig(model="mini-clip", tasks=["mini_colors"], methods=["clipfit"], seeds=[1], shots=2,
                                 epochs=1, data_root=compare.data_root, out=str(tmp_path / "runs" / "mini-clip"),
                                 fewshot_shots=(), run_missing=False)
    row = mini_world_table(table, progress=False)[0]
    assert row["methods"]["clipfit"]["mean"]["hm"] == pytest.approx(result["base2new"]["clipfit"]["hm"])
    assert row["zeroshot_all"] == result["zeroshot_all"]
    again = compare_models(dataclasses.replace(compare, run_missing=False), progress=False)["mini-clip"]
    assert again == result
    lines = to_markdown(compare, {"mini-clip": result}).splitlines()
    assert lines[0] == "| mean over 1 tasks | `mini-clip` |" and len(lines) == 2 + 2 + len(BASE_TO_NEW) + 2


def test_a_model_without_its_weights_is_refused_before_any_run(tmp_path, monkeypatch):
    missing = tmp_path / "absent.safetensors"
    monkeypatch.setattr("clipfit_world.model.weights_file", lambda model: missing if model == "mini-clip-b"
                        else weights_file(model))
    compare = CompareConfig(models=["mini-clip", "mini-clip-b"], data_root=str(tmp_path / "data"),
                            out=str(tmp_path / "runs"))
    with pytest.raises(ClipFitError, match=r"mini-clip-b: its built-in weights are not there yet .*absent"):
        compare_models(compare, progress=False)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
