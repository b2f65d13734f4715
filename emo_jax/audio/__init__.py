"""Audio: decoding, wav2vec2 / log-mel features per video frame."""
