"""Algorithm rules without a training loop: SER's Eq. 2-5, its splits and pseudo-labels."""
