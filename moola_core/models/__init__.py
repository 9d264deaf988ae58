"""Moola's models: the shared BiLSTM encoder, JadeModel and its span heads. Torch + stdlib only."""
