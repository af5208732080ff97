//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and writes the
//! encoded descriptor set that gRPC server reflection serves.
//!
//! `proto/etcd/` (the subset of etcd's v3 API that aigw-config's etcd client uses) is
//! compiled on its own, client side only, and kept out of that descriptor set: aigw
//! does not serve those services.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["aigw/config/v1/config.proto", "aigw/discovery/v1/discovery.proto", "aigw/tokencache/v1/tokencache.proto"];
    let fds = protox::compile(files, [&root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("aigw_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    let etcd = protox::compile(["etcd/mvccpb/kv.proto", "etcd/etcdserverpb/rpc.proto"], [&root])?;
    tonic_prost_build::configure().build_server(false).build_client(true).compile_fds(etcd)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
