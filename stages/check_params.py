"""Check the whole of params.yaml before any stage runs.

DVC deletes a stage's outputs just before running it, so a typo found by the stage itself would
already have cost the previous model and calibrator. Every stage depends on this one's marker file,
whose content never changes: a valid edit re-runs only the stages it touches, an invalid one stops
`dvc repro` here with the key named and every output left in place.
"""

import argparse
from pathlib import Path

from echoef import params
from echoef.errors import ParamsError
from echoef.io.atomic import write_json
from echoef.stage import run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, required=True, help="the parameters file to check")
    parser.add_argument("--marker", type=Path, required=True, help="written when they are valid; every stage depends on it")
    parser.add_argument("--phantom", type=Path, required=True, help="the folder the phantom stage writes")
    args = parser.parse_args()
    root = Path(params.load(args.params).data.root)
    if root != args.phantom and not root.is_dir():
        raise ParamsError(f"{args.params}: data.root = '{root}' is not a folder; point it at a CAMUS download "
                          f"(the folder holding database_nifti/, or the 2019 patient folders) or at {args.phantom}")
    write_json(args.marker, {"params": str(args.params), "valid": True})


if __name__ == "__main__":
    run(main)
