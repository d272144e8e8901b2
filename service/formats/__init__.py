"""Model file formats: GGML (writer, reader, quantisers), safetensors, conversion, the manifest."""
