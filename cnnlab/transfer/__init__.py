"""Transfer learning workflows: the linear probe (``cnnlab probe``) and the data-size ladder (``cnnlab transfer``).

:mod:`cnnlab.transfer.probe` fits a linear classifier on a trained network's pooled features (the
lecture's "linear classifier on the top layer"); :mod:`cnnlab.transfer.ladder` compares training from
scratch, the probe, fine-tuning the top stage and fine-tuning everything at several training-set
sizes, and reads the winners against the lecture's data x similarity table.
"""
