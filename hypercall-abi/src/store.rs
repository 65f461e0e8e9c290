//! The store protocol (being written).
