"""bagrepro: reproduce Brendel & Bethge (ICLR 2019), BagNets and their comparisons with deep CNNs."""

__version__ = "0.1.0"
