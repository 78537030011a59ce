"""bnorder: which order of BatchNorm, activation and Dropout works best? Measured on CIFAR-10."""

__version__ = "0.1.0"
