//! Guest SDK (being written).
#![no_std]
