//! x86 tables (being written).
