#!/usr/bin/env bash
# Install the zoo with its test tools and Hydra's cluster plugins (launchers, Optuna sweeper)
# and run the fast test suite (slow tests: add -m slow).
#   bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --root-user-action=ignore -e ".[dev,cluster]"
# The real Fashion-MNIST tests use Debian's package where the machine allows it (else they skip).
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }) >/dev/null 2>&1 || true
fi
export WANDB_MODE=offline WANDB_SILENT=true
python3 -m ruff check zoo tests train.py notebooks   # lint first: seconds, and one clear failure
exec python3 -m pytest "$@"
