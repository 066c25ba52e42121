"""Built-in evaluation protocols: frozen-feature extraction, few-shot episodes, linear probe, fine-tuning."""
