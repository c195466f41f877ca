//! Compiles `proto/walrus.proto` for the `grpc` feature, in pure Rust: protox parses it (no
//! `protoc` on the machine) and tonic-prost-build generates the messages, service and client.

fn main() {
    #[cfg(feature = "grpc")]
    if let Err(e) = grpc() {
        eprintln!("compiling proto/walrus.proto: {e}");
        std::process::exit(1);
    }
}

#[cfg(feature = "grpc")]
fn grpc() -> Result<(), Box<dyn std::error::Error>> {
    // compile_fds cannot see the .proto files, so the build is rerun on their changes here.
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/walrus.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // `bytes` fields as `bytes::Bytes`: entries go out as views of the log's mapping.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
