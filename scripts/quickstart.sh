#!/usr/bin/env bash
# From a fresh clone: install the zoo, get a real dataset offline, train a ResNet-20 on it.
#   bash scripts/quickstart.sh [extra train.py overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --root-user-action=ignore -e .

# Fashion-MNIST comes as a Debian package; without root or apt, use scikit-learn's digits.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }) >/dev/null || true
fi
if [ -d /usr/share/datasets/fashion-mnist ]; then
  # all 55k training images, 2 epochs (README: the measured time and accuracy on 2 CPU cores)
  # with bf16 matrix units (README); the eval pass over the training set is left for later runs
  data=(data=fashion_mnist trainer.max_epochs=2 callbacks.train_eval.at_end=false)
else
  data=(data=digits data.batch_size=32 trainer.max_epochs=12)
fi
exec python3 train.py model=resnet20 "${data[@]}" "$@"
