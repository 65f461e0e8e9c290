//! Placeholder, replaced below.
#![no_std]
#![no_main]
guest_sdk::entry!(main);
fn main(_: &guest_sdk::StartInfo) {}
