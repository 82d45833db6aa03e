"""SER's rules without a training loop: Eq. 2-5 (``rules``), its splits and pseudo-labels (``data``); the run is
:mod:`r2m.recipes.ser`."""
