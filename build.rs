//! Generates the scheduler protocol's Rust types from proto/scheduler.proto with protox (a pure-Rust
//! protobuf compiler), so building needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/scheduler.proto");
    let fds = protox::compile(["scheduler.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
