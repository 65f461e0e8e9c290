//! Shared rings (being written).
