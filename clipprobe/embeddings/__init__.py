"""Image and text embeddings: the resumable cache and the FAISS index over it."""
