//! The smallest guest: prints a line and powers off.
#![no_std]
#![no_main]

use guest_sdk::{println, StartInfo};

guest_sdk::entry!(main);

fn main(_start: &StartInfo) {
    println!("Hello from a paravirtualized guest!");
}
