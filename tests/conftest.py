import sys
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run: a red CI run can be reproduced.
settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
CAMUS = SHARED / "camus"
CAMUS_2019 = SHARED / "camus-2019-sample"

# Only where the shared data is absent may its tests skip; .ci/run makes that absence a failure.
needs_shared = pytest.mark.skipif(not CAMUS.is_dir(), reason="../shared/data/camus is absent")


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    from echoef import phantom

    root = tmp_path_factory.mktemp("phantom")
    phantom.write_cohort(root, 12, seed=3)
    return root
