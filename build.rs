//! Compiles proto/*.proto into Rust with protox (a pure-Rust protobuf compiler), so no system protoc is
//! needed; prost-build turns the descriptor set into code in OUT_DIR.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/transfer.proto", "proto/scheduler.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
