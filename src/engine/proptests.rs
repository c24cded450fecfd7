//! Property tests for the engine (filled below).
