"""Example models on pyfastattn's kernels (installed with the pyfastattn wheel).

- `transformer`: the encoder-decoder Transformer of Vaswani et al. (2017) and a seq2seq demo task;
- `vit`: a Vision Transformer with a conv2d patch embedding (demo: scikit-learn's digits);
- `airshower_sim`: a toy Pierre-Auger-like surface-detector simulation (numpy, seeded);
- `airshower`: `HexCNN` (hexagonal convolutions) and `ShowerTransformer` (stations as tokens,
  pairwise-geometry attention bias) reconstructing energy, direction, core and Xmax;
- `train`: `pyfastattn train {airshower,vit,transformer}`;
- `ops`: the one table that maps a model's `backend` ("pyfastattn" | "torch") to its kernels.

Every model uses only pyfastattn's public API, and builds identical parameters for either backend.
"""
