//! Promotion policies: the pure parts (window arithmetic, approval counting).
