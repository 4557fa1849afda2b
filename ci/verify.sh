#!/usr/bin/env bash
# The README's test command, verbatim. Budget: see ci/budgets.yaml.
set -euo pipefail
python3 -m pip install nox && python3 -m nox -s verify
