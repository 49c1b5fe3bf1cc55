"""``python -m cnnlab ...`` (and ``torchrun ... -m cnnlab train ...``) runs the command line."""

from cnnlab.cli import main

main()
