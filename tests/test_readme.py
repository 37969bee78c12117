"""The README cannot drift from the code: its op list is made from the public API, and it names every option of
every command."""
import argparse
import runpy
from pathlib import Path

from graphc.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_op_list_is_the_public_api():
    api = runpy.run_path(str(ROOT / "docs" / "api.py"))
    assert api["ops_markdown"]() in README, "the op list is stale: run python docs/api.py"


def test_every_command_and_option_is_in_the_readme():
    for name, (adder, _) in COMMANDS.items():
        parser = argparse.ArgumentParser()
        adder(parser)
        assert f"graphc {name} MODEL.py" in README, name
        for action in parser._actions:
            options = [o for o in action.option_strings if o not in ("-h", "--help")]
            assert not options or any(o in README for o in options), (name, options)
    assert "--graph NAME" in README
