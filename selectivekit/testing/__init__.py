"""Testing helpers for selectivekit and its users (hypothesis strategies)."""
