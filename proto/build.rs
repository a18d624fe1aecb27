fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/ferry/storage/v1/storage.proto",
            "proto/ferry/replication/v1/replication.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
