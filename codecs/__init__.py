"""Audio formats: PCM16 wire encoding, resampling, audio files (and later EnCodec)."""
