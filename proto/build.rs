fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The replication protocol carries forwarded requests: it refers to the forward types, which
    // are generated once, by the second call (the first leaves an empty module for them).
    tonic_prost_build::configure()
        .extern_path(".ferry.forward.v1", "crate::forward")
        .compile_protos(
            &[
                "proto/ferry/storage/v1/storage.proto",
                "proto/ferry/replication/v1/replication.proto",
            ],
            &["proto"],
        )?;
    tonic_prost_build::configure()
        .compile_protos(&["proto/ferry/forward/v1/forward.proto"], &["proto"])?;
    Ok(())
}
