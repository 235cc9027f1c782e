"""The one ``--set KEY=VALUE`` parser that ``train`` and ``simulate`` share."""

import pytest
from click.testing import CliRunner

from mindsearch.cli.common import parse_settings
from mindsearch.cli.main import cli
from mindsearch.errors import MindsearchError


def test_values_are_json_when_they_parse():
    got = parse_settings(["lr=3e-4", "use_prior=false", "loss=clip", "sessions=[1, 2]", "name=a=b"])
    assert got == {"lr": 3e-4, "use_prior": False, "loss": "clip", "sessions": [1, 2], "name": "a=b"}
    assert parse_settings(()) == {}


@pytest.mark.parametrize("bad", ["no_equals", "=3"])
def test_malformed_pair_is_an_input_error(bad):
    with pytest.raises(MindsearchError, match="KEY=VALUE"):
        parse_settings([bad])


@pytest.mark.parametrize("command", [["train", "--data", "x", "--subject", "1", "--out", "o"], ["simulate", "o"]])
def test_both_commands_report_a_malformed_pair_in_one_line(tmp_path, command):
    res = CliRunner().invoke(cli, [*command, "--set", "oops"])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "KEY=VALUE" in lines[0]
