"""docs/configuration.md stays true to the model: every key, its default, its status, the example.

Keys come from the model's dataclasses (`appliance.config.keys`), so a key added to
`model.py` fails here until it is documented.
"""

from __future__ import annotations

import re
import tomllib

import pytest

from appliance.config import load_dict
from appliance.config.keys import keys, to_dict
from helpers import REPO

DOC = (REPO / "docs" / "configuration.md").read_text()
MODEL_KEYS = list(keys())
# A documented key is a table row: | `dotted.key` | `default` | meaning | IDs |
ROW = re.compile(r"^\| `(?P<key>[a-z0-9_.\[\]]+)` \| `(?P<default>[^`]*)` \| (?P<meaning>.*?) \| (?P<ids>.*?) \|$", re.M)
ROWS = {m["key"]: m for m in ROW.finditer(DOC)}


def as_toml(value):
    return list(value) if isinstance(value, tuple) else value


def test_every_model_key_is_documented_and_nothing_else():
    assert sorted(ROWS) == sorted(k.name for k in MODEL_KEYS)


@pytest.mark.parametrize("key", MODEL_KEYS, ids=[k.name for k in MODEL_KEYS])
def test_documented_default_is_the_models(key):
    row = ROWS[key.name]
    if key.required:
        assert row["default"] == "required"
    else:
        assert tomllib.loads(f"v = {row['default']}")["v"] == as_toml(key.default)


@pytest.mark.parametrize("key", MODEL_KEYS, ids=[k.name for k in MODEL_KEYS])
def test_row_says_whether_the_key_is_enforced_and_what_it_implements(key):
    row = ROWS[key.name]
    assert ("**Not enforced yet" in row["meaning"]) == (key.inert is not None)
    assert row["ids"].strip()


def _example() -> dict:
    blocks = re.findall(r"^## Complete example\n.*?```toml\n(.*?)```", DOC, re.S | re.M)
    assert len(blocks) == 1
    return tomllib.loads(blocks[0])


def _flatten(table: dict, prefix: str = "") -> set[str]:
    found = set()
    for name, value in table.items():
        if isinstance(value, dict):
            found |= _flatten(value, f"{prefix}{name}.")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                found |= _flatten(item, f"{prefix}{name}[].")
        else:
            found.add(prefix + name)
    return found


def test_complete_example_is_valid_and_sets_every_key():
    example = _example()
    config = load_dict(example)
    assert _flatten(example) == {k.name for k in MODEL_KEYS}
    assert len(config.remote_aes) == 2


def test_complete_example_uses_the_defaults_apart_from_its_arrays_of_tables():
    example = _example()
    defaults = to_dict(load_dict({}))
    # The arrays of tables need an entry for their keys to appear; their default is empty.
    example["network"]["hosts"] = []
    assert {**example, "remote_aes": []} == defaults
