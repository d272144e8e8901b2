"""The GGML gpt2 model file: writer, reader and ggml block quantisers."""
