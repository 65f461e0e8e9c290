//! Makes the SDK's linker script, `guest.ld`, reachable from every guest crate: a `-L` path
//! emitted by a dependency's build script is passed to the link of every crate that depends on
//! it, so the target's rustflags (`.cargo/config.toml`) can just say `-Tguest.ld`.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rerun-if-changed=guest.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
