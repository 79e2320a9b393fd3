"""The command line: every verb has --help, and `data check` reports exact paths."""

from __future__ import annotations

import pytest

from clipfit.cli import main


@pytest.mark.parametrize(
    "verb", [["train"], ["eval"], ["predict"], ["params"], ["demo"], ["data", "check"], ["data", "list"]]
)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: clipfit" in capsys.readouterr().out


def test_data_check_names_the_missing_split_file_and_fails(eurosat_root, capsys):
    (eurosat_root / "eurosat" / "split_zhou_EuroSAT.json").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", "--dataset", "eurosat", "--data-root", str(eurosat_root)])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert f"MISSING  {eurosat_root / 'eurosat' / 'split_zhou_EuroSAT.json'}" in out


def test_data_check_passes_on_a_complete_dataset(eurosat_root, capsys):
    main(["data", "check", "--dataset", "eurosat", "--data-root", str(eurosat_root)])
    assert "MISSING" not in capsys.readouterr().out


def test_eval_of_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--run", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a run folder" in err


def test_train_flags_override_the_config_file_and_unset_flags_keep_it(tmp_path):
    from clipfit.cli import _config_from_args, build_parser

    config = tmp_path / "config.json"
    config.write_text('{"dataset": "mini_letters", "shots": 4, "hflip": true}')
    from_flags = _config_from_args(build_parser().parse_args(["train", "--config", str(config), "--no-hflip",
                                                              "--lr", "0.01"]))
    got = (from_flags.dataset, from_flags.shots, from_flags.hflip, from_flags.optim.lr)
    assert got == ("mini_letters", 4, False, 0.01)
    assert _config_from_args(build_parser().parse_args(["train", "--config", str(config)])).hflip is True
