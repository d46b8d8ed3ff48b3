"""`service-tool config validate|show` through the installed console script (TL-04)."""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import pytest

from appliance.config import load_dict, load_file
from appliance.config.keys import to_dict
from helpers import tool as run
from service_tool.cli import build_parser



@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text('[storage_scp]\nae_title = "ARCHIVE"\n\n[[remote_aes]]\n'
                    'ae_title = "PACS"\nhost = "10.0.0.9"\nport = 104\n')
    return path


def test_validate_accepts_a_valid_file(config_file):
    result = run("--config", str(config_file), "config", "validate")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"configuration valid: {config_file}\n"


@pytest.mark.parametrize("text, key", [
    ('[storage_scp]\nae_title = "EX_QUERY_SCP"\n', "storage_scp.ae_title"),  # AE-06
    ('[query_retrieve_scp]\nport = 65536\n', "query_retrieve_scp.port"),
    ('[storage_scp]\ntransfer_syntaxes = ["1.2.840.10008.1.2.1"]\n', "storage_scp.transfer_syntaxes"),  # PC-04
    ('[timeouts]\nartim = "soon"\n', "timeouts.artim"),
])
def test_validate_refuses_naming_the_key(tmp_path, text, key):
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    result = run("--config", str(path), "config", "validate")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"configuration invalid: {key}: ")


def test_validate_lists_every_invalid_key(tmp_path):  # TL-04, issue 22 item 4
    path = tmp_path / "appliance.toml"
    path.write_text('[storage_scp]\nport = 70000\nae_title = "A\\\\B"\n\n[timeouts]\nartim = "soon"\n')
    result = run("--config", str(path), "config", "validate")
    assert result.returncode == 1
    assert result.stdout == ""
    assert [line.split(": ")[1] for line in result.stderr.splitlines()] == [
        "storage_scp.ae_title", "storage_scp.port", "timeouts.artim"]
    assert all(line.startswith("configuration invalid: ") for line in result.stderr.splitlines())


def test_validate_reports_a_missing_file(tmp_path):
    result = run("--config", str(tmp_path / "none.toml"), "config", "validate")
    assert result.returncode == 1
    assert "cannot read" in result.stderr and "none.toml" in result.stderr


def test_validate_warns_about_keys_that_have_no_effect_yet(tmp_path):
    path = tmp_path / "appliance.toml"
    path.write_text("[storage_scp]\narchive_unsolicited = false\n[storage_scu]\nopen_retries = 2\n")
    result = run("--config", str(path), "config", "validate")
    assert result.returncode == 0
    assert "warning: storage_scp.archive_unsolicited is set but has no effect yet" in result.stderr
    assert "storage_scu.open_retries" not in result.stderr  # enforced since C-MOVE


def test_show_prints_the_effective_configuration_as_toml(config_file):
    result = run("--config", str(config_file), "config", "show")
    assert result.returncode == 0, result.stderr
    shown = tomllib.loads(result.stdout)
    assert shown == to_dict(load_file(config_file))
    assert shown["storage_scp"]["ae_title"] == "ARCHIVE"
    assert shown["query_retrieve_scp"]["port"] == 5000  # a default the file does not set
    assert shown["remote_aes"] == [{"ae_title": "PACS", "host": "10.0.0.9", "port": 104, "move_destination": True,
                                    "commitment": True, "store": False, "query": False, "tls": False,
                                    "tls_subject": ""}]
    assert load_dict(shown) == load_dict(tomllib.loads(config_file.read_text()))


def test_show_json(config_file):
    result = run("--config", str(config_file), "config", "show", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == to_dict(load_file(config_file))


def test_show_refuses_an_invalid_file(tmp_path):
    path = tmp_path / "appliance.toml"
    path.write_text("[storage]\nsize = 1\n")
    result = run("--config", str(path), "config", "show")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("configuration invalid: storage.size: unknown key")


@pytest.mark.parametrize("args", [(), ("config",), ("config", "validate"), ("config", "show")])
def test_help_on_every_command(args):
    result = run(*args, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: service-tool {' '.join(args)}".rstrip())


def test_default_config_path_is_the_installed_one():
    assert "/etc/appliance/appliance.toml" in run("--help").stdout


@pytest.mark.parametrize("args", [(), ("config",), ("config", "frobnicate")])
def test_missing_or_unknown_command_is_a_usage_error(args):
    result = run(*args)
    assert result.returncode == 2
    assert "usage: service-tool" in result.stderr


def _commands(parser, path=()):
    """Every command path of the tool's parser, e.g. ("remote", "add")."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,)
                yield from _commands(sub, path + (name,))


@pytest.mark.parametrize("command", list(_commands(build_parser())), ids=" ".join)
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: service-tool ")
    description = result.stdout.split("\n\n")[1]
    assert len(description) > 20  # a sentence, not just the usage line
