"""The variance shift of Li et al. (2019): measured per BN layer, BN re-calibration, and
the audit of any model."""
