"""Convert weights between PyTorch formats and Orbax (a thin script over `emo-jax convert`).

python tools/convert_weights.py --src v1-5-pruned-emaonly.safetensors --dst sd15 --dst-format diffusers
"""

import sys

from emo_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
