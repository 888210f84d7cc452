//! Route matching (being written).
