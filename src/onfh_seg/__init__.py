"""onfh-seg: segmentation, measurement and follow-up tracking of femoral head
osteonecrosis (ONFH) on T1-weighted hip MRI.

Research software. The shipped model is trained on synthetic data only and is
not for clinical use.
"""

__version__ = "0.1.0"
