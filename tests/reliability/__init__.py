"""The reliability suite: crashes, load, parallel labs, bad input and killed kernels."""
