"""The Hugging Face Hub: download through huggingface_hub, repo plans, the models dir store."""
