"""Model compression: BN-sparsity training, the layer graph and pruning engine, quantization
(fake-quant training, integer export and its NumPy forward) and distillation."""
