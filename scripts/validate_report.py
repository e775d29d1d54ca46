#!/usr/bin/env python3
"""Validates kvbench reports against docs/report.schema.json.

Usage: scripts/validate_report.py REPORT.json [REPORT.json ...]
Exit status 0 when every report is valid, 1 otherwise (each error printed with its JSON path).
Needs python3-jsonschema (installed by scripts/setup.sh).
"""
import json
import pathlib
import sys

import jsonschema

SCHEMA = pathlib.Path(__file__).resolve().parent.parent / "docs" / "report.schema.json"


def validate(path, validator):
    try:
        report = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as e:
        print(f"{path}: cannot read report: {e}")
        return False
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    for e in errors:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        print(f"{path}: {where}: {e.message}")
    return not errors


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip())
        return 2
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=jsonschema.FormatChecker())
    ok = all([validate(p, validator) for p in argv[1:]])
    if ok:
        print(f"{len(argv) - 1} report(s) valid")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
