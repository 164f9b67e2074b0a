//! Generates the peer gRPC code from `proto/*.proto` with no `protoc`: `protox` parses the
//! files into a descriptor set and `tonic-prost-build` turns that into Rust.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["peer.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The bulk payloads of the write path are `bytes::Bytes`: a WAL record's payload is
        // shipped without copying it into a `Vec` first, and decoded without another copy.
        .bytes(".zepto.peer.v1.WalRecord.payload")
        .bytes(".zepto.peer.v1.ForwardPart.arrow_ipc")
        .compile_fds(fds)?;
    Ok(())
}
