//! Embeds an rpath to the libpython that pyo3 was configured against.
//!
//! Without it the dynamic loader resolves `libpython3.11.so.1.0` through ldconfig, which on this machine is Debian's
//! 3.11.2, silently mixing pyenv 3.11.7's build configuration with another runtime and stdlib (RUST-STACK.md §5.1).

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo:rerun-if-changed=build.rs");
}
