"""The provenance every stored result carries."""

import re

import torch

from foresight.environment import describe, device_name


def test_describe_names_the_device_versions_and_date():
    info = describe("cpu")
    assert info["device"].startswith("CPU (") and info["device"] == device_name(torch.device("cpu"))
    assert info["torch"] == torch.__version__ and info["cuda"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", info["date"])
    # Inside this git checkout the commit is a 40-hex-digit SHA, marked +dirty while files are modified.
    assert info["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", info["git_commit"])
