"""Golden values: the quick presets' mask checksums and first-epoch losses stay as recorded.

``tests/golden/record.py`` records them (``--write``) and checks every preset; this test runs the
cases that take seconds. A deliberate change of the random stream re-records them and says so in
the commit.
"""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))
import record  # noqa: E402

STORED = json.loads(record.FILE.read_text())
QUICK = sorted(name for name in record.cases() if name.startswith(("digits/uniform/", "digits/erk/",
                                                                    "digits/snip/eoi", "mlp/")))


@pytest.mark.parametrize("name", QUICK)
def test_golden_values_hold(name, tmp_path):
    preset, overrides = record.cases()[name]
    got = record.run_case(preset, overrides, str(tmp_path))
    assert got == STORED[name]
