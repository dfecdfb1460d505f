//! `sqlx::migrate!` embeds the migrations at compile time but cannot tell cargo to watch them
//! on stable Rust: rebuild this crate whenever a migration changes.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
