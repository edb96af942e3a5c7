"""Inference outside the training loop: batched prediction on the mesh, sliding windows on scans."""
